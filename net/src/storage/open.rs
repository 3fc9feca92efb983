//! Opening a data dir: the lock, the identity check, recovery (decided by
//! `kv_engine::storage::recovery`, carried out here), and start-up
//! durability: every file the node will rely on is fsynced, with the
//! directory and its parent, before anything is read back as durable (an
//! earlier process may have died with its writes still in the page cache).

use std::path::{Path, PathBuf};

use kv_engine::kv::KvStore;
use kv_engine::raft::Found;
use kv_engine::raft::SnapshotInfo;
use kv_engine::storage::meta::{
    decode_meta_file, encode_meta_file, DataDirMeta, MetaError, FORMAT_VERSION,
};
use kv_engine::storage::record::encode_hard_state;
use kv_engine::storage::recovery::{
    check_identity, check_snapshot_file, received_name, segment_name, snapshot_name,
    unfinished_install, Damage, DirListing, IdentityCheck, KeptSegment, Recovery, SnapshotFindings,
    WalScan, DAMAGED_SUFFIX, META_FILE, REPAIR_MARKER, TEMP_SUFFIX,
};
use kv_proto::raft::{HardState, SnapshotMeta};

use super::{io_err, Recovered, SegmentInfo, Storage, StorageError, StorageOptions, LOCK_FILE};
use crate::fs::{AppendFile, FileSystem};
use crate::snapshots;

impl<F: FileSystem> Storage<F> {
    /// Opens (or creates) the data directory and recovers its state.
    pub fn open(
        fs: F,
        dir: &Path,
        opts: StorageOptions,
    ) -> Result<(Self, Recovered), StorageError> {
        fs.create_dir_all(dir)
            .map_err(io_err("create directory", dir))?;
        let lock = take_lock(&fs, dir)?;
        let names = fs.list(dir).map_err(io_err("list", dir))?;
        let listing = DirListing::from_names(&names);
        for tmp in &listing.temporaries {
            let path = dir.join(tmp);
            fs.remove(&path).map_err(io_err("remove", &path))?;
        }
        if let Some((path, len)) = &opts.cut_back {
            cut_to(&fs, path, *len)?;
        }
        let meta = read_meta(&fs, dir, &listing)?;
        let identity = check_identity(meta, opts.identity, &listing);
        let (mut recovery, state) = match &identity {
            IdentityCheck::Mismatch(found) => return Err(mismatch(dir, *found, opts.identity)),
            IdentityCheck::Fresh => {
                write_meta(&fs, dir, &opts.identity)?;
                scan(&fs, dir, &listing, true)?
            }
            IdentityCheck::Matches if opts.cache_untrusted && listing.has_data_files() => {
                let cause = Damage {
                    file: String::from("(page cache)"),
                    offset: 0,
                    reason: "a start-up fsync failed: what the page cache holds may never \
                             have reached the disk"
                        .into(),
                };
                (Recovery::untrusted(&listing, cause), None)
            }
            IdentityCheck::Matches => scan(&fs, dir, &listing, true)?,
            IdentityCheck::Damaged(cause) => (Recovery::untrusted(&listing, cause.clone()), None),
        };
        if recovery.found == Found::Damaged {
            let rewrite_meta =
                matches!(identity, IdentityCheck::Damaged(_)).then_some(&opts.identity);
            repair(&fs, dir, &mut recovery, &listing, rewrite_meta)?;
        } else {
            tidy(&fs, dir, &recovery)?;
        }
        make_durable(&fs, dir, &recovery)?;
        let state = state
            .filter(|_| recovery.snapshot.is_some())
            .unwrap_or_default();
        Self::start(fs, dir, opts, recovery, state, lock)
    }

    /// The storage, positioned after the recovered log, and what it holds.
    fn start(
        fs: F,
        dir: &Path,
        opts: StorageOptions,
        recovery: Recovery,
        state: KvStore,
        lock: F::Lock,
    ) -> Result<(Self, Recovered), StorageError> {
        let mut segments: Vec<SegmentInfo> = recovery
            .segments
            .iter()
            .map(|s| SegmentInfo {
                seq: s.seq,
                path: dir.join(segment_name(s.seq)),
                max_index: s.max_index,
                len: s.len,
            })
            .collect();
        let current_len = recovery.segments.last().map_or(0, |s| s.len);
        if segments.is_empty() {
            let seq = recovery.next_segment_seq();
            segments.push(SegmentInfo {
                seq,
                path: dir.join(segment_name(seq)),
                max_index: 0,
                len: 0,
            });
        }
        let current_path = segments.last().map(|s| s.path.clone()).unwrap_or_default();
        let mut current = fs
            .open_append(&current_path)
            .map_err(io_err("open", &current_path))?;
        let mut current_len = current_len;
        if current_len == 0 && recovery.log.hard_state != HardState::default() {
            // Every segment opens with the hard state, so compacting the
            // ones before it never loses it: a new one, or one cut back to
            // nothing after a failed rotation, gets it here.
            let mut buf = Vec::new();
            encode_hard_state(&recovery.log.hard_state, &mut buf);
            current
                .append(&buf)
                .map_err(io_err("append", &current_path))?;
            current.sync().map_err(io_err("fdatasync", &current_path))?;
            current_len = buf.len() as u64;
        }
        fs.sync_dir(dir).map_err(io_err("sync directory", dir))?;
        let snapshot_index = recovery
            .snapshot
            .as_ref()
            .map(|s| s.meta)
            .map_or(0, |m| m.index);
        let recovered = Recovered {
            hard_state: recovery.log.hard_state,
            snapshot: recovery.snapshot,
            entries: recovery.log.entries,
            found: recovery.found,
            damage: recovery.damage,
            state,
        };
        let storage = Storage {
            fs,
            dir: dir.to_path_buf(),
            opts,
            segments,
            current,
            current_len,
            synced_len: current_len,
            hard_state: recovered.hard_state,
            snapshot_index,
            buf: Vec::with_capacity(64 * 1024),
            failed: None,
            _lock: lock,
        };
        Ok((storage, recovered))
    }
}

fn take_lock<F: FileSystem>(fs: &F, dir: &Path) -> Result<F::Lock, StorageError> {
    let path = dir.join(LOCK_FILE);
    fs.lock(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::WouldBlock => StorageError::Locked {
            dir: dir.to_path_buf(),
        },
        _ => StorageError::Io {
            op: "lock",
            path,
            source: e,
        },
    })
}

fn mismatch(dir: &Path, found: DataDirMeta, expected: DataDirMeta) -> StorageError {
    if (found.cluster_id, found.node_id) == (expected.cluster_id, expected.node_id) {
        return StorageError::Format {
            dir: dir.to_path_buf(),
            found: found.format_version,
            supported: FORMAT_VERSION,
        };
    }
    StorageError::IdentityMismatch {
        dir: dir.to_path_buf(),
        found_node: found.node_id,
        found_cluster: found.cluster_id,
        node: expected.node_id,
        cluster: expected.cluster_id,
    }
}

fn read_meta<F: FileSystem>(
    fs: &F,
    dir: &Path,
    listing: &DirListing,
) -> Result<Option<Result<DataDirMeta, MetaError>>, StorageError> {
    if !listing.meta {
        return Ok(None);
    }
    let path = dir.join(META_FILE);
    let bytes = fs.read(&path).map_err(io_err("read", &path))?;
    Ok(Some(decode_meta_file(&bytes)))
}

/// Writes the identity file durably: temp file, fsync, rename, then the
/// directory and its parent (so the data dir itself exists after a crash).
fn write_meta<F: FileSystem>(fs: &F, dir: &Path, meta: &DataDirMeta) -> Result<(), StorageError> {
    let path = dir.join(META_FILE);
    let tmp = dir.join(format!("{META_FILE}{TEMP_SUFFIX}"));
    fs.write_synced(&tmp, &encode_meta_file(meta))
        .map_err(io_err("write", &tmp))?;
    fs.rename(&tmp, &path).map_err(io_err("rename", &tmp))?;
    fs.sync_dir(dir).map_err(io_err("sync directory", dir))?;
    sync_parent(fs, dir)
}

fn sync_parent<F: FileSystem>(fs: &F, dir: &Path) -> Result<(), StorageError> {
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs.sync_dir(&parent)
        .map_err(io_err("sync directory", &parent))
}

/// A snapshot file recovery may start from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Candidate {
    /// In place (`snapshot_name`): taken locally, or an install the WAL
    /// witnessed.
    InPlace(u64),
    /// Received from a leader (`received_name`): trusted only if the WAL
    /// holds its install's marker, which a crash before the rename left.
    Received(u64),
}

impl Candidate {
    fn index(self) -> u64 {
        match self {
            Candidate::InPlace(i) | Candidate::Received(i) => i,
        }
    }

    fn name(self) -> String {
        match self {
            Candidate::InPlace(i) => snapshot_name(i),
            Candidate::Received(i) => received_name(i),
        }
    }
}

/// Every snapshot file, newest first; at one index, the one in place first.
fn candidates(listing: &DirListing) -> Vec<Candidate> {
    let mut all: Vec<Candidate> = listing
        .snapshots
        .iter()
        .map(|&i| Candidate::InPlace(i))
        .chain(listing.received.iter().map(|&i| Candidate::Received(i)))
        .collect();
    all.sort_by_key(|c| {
        (
            std::cmp::Reverse(c.index()),
            matches!(c, Candidate::Received(_)),
        )
    });
    all
}

/// Reads what recovery needs: snapshots newest first until one checks out,
/// then the segments in order (none after the first damage). A snapshot
/// whose install never finished is dropped and the next older one tried;
/// so is every received snapshot the WAL does not witness.
fn scan<F: FileSystem>(
    fs: &F,
    dir: &Path,
    listing: &DirListing,
    build: bool,
) -> Result<(Recovery, Option<KvStore>), StorageError> {
    let mut found = SnapshotFindings::default();
    let mut candidates = candidates(listing).into_iter();
    loop {
        let chosen = newest_valid_snapshot(fs, dir, &mut candidates, &mut found, build);
        let picked = chosen.as_ref().map(|(c, info, _)| (*c, *info));
        let state = chosen.and_then(|(_, _, state)| state);
        let snapshot = picked.map(|(_, info)| info);
        let wal = scan_wal(fs, dir, listing, snapshot.map(|s| s.meta))?;
        let received = matches!(picked, Some((Candidate::Received(_), _)));
        let unwitnessed = received && !wal.log().marked;
        if let Some((c, s)) =
            picked.filter(|(_, s)| unwitnessed || unfinished_install(s, wal.log()))
        {
            tracing::warn!(
                index = s.meta.index,
                "dropping a snapshot whose install from the leader never finished"
            );
            found.unfinished.push(c.name());
            continue;
        }
        // Received files not chosen are leftovers of installs that never
        // finished or were not needed.
        found.unfinished.extend(
            candidates
                .by_ref()
                .filter(|c| matches!(c, Candidate::Received(_)))
                .map(Candidate::name),
        );
        let mut recovery = Recovery::new(snapshot, found, wal, listing.repair_marker);
        if received {
            recovery.put_in_place = snapshot.map(|s| s.meta.index);
        }
        return Ok((recovery, state));
    }
}

/// The newest snapshot among `candidates` that checks out, and (if `build`)
/// the state machine rebuilt from it in the same pass, so a large snapshot
/// is read once at start, not twice. Those that do not check out on the way
/// go to `found`.
fn newest_valid_snapshot<F: FileSystem>(
    fs: &F,
    dir: &Path,
    candidates: &mut impl Iterator<Item = Candidate>,
    found: &mut SnapshotFindings,
    build: bool,
) -> Option<(Candidate, SnapshotInfo, Option<KvStore>)> {
    for candidate in candidates {
        let (index, path) = (candidate.index(), dir.join(candidate.name()));
        let verified = if build {
            snapshots::verify_and_restore(fs, &path).map(|(info, kv)| (info, Some(kv)))
        } else {
            snapshots::verify(fs, &path).map(|info| (info, None))
        };
        let (read, state) = match verified {
            Ok((info, kv)) => (Ok(info.meta), Some((info.size, kv))),
            Err(e) => (Err(e), None),
        };
        let size = state.as_ref().map_or(0, |(size, _)| *size);
        match check_snapshot_file(index, read, size) {
            Ok(s) => return Some((candidate, s, state.and_then(|(_, kv)| kv))),
            Err(reason) => {
                tracing::error!(file = %path.display(), %reason, "invalid snapshot; trying an older one");
                match candidate {
                    Candidate::InPlace(_) => found.bad.push((index, reason)),
                    Candidate::Received(_) => found.bad_received.push(candidate.name()),
                }
            }
        }
    }
    None
}

fn scan_wal<F: FileSystem>(
    fs: &F,
    dir: &Path,
    listing: &DirListing,
    snapshot: Option<SnapshotMeta>,
) -> Result<WalScan, StorageError> {
    let mut wal = WalScan::new(snapshot);
    for (i, &seq) in listing.segments.iter().enumerate() {
        let is_last = i + 1 == listing.segments.len();
        if wal.is_damaged() {
            wal.feed(seq, &[], is_last);
            continue;
        }
        let path = dir.join(segment_name(seq));
        let bytes = fs.read(&path).map_err(io_err("read", &path))?;
        wal.feed(seq, &bytes, is_last);
    }
    Ok(wal)
}

/// No damage: cut a torn tail, set aside snapshots that did not check out.
fn tidy<F: FileSystem>(fs: &F, dir: &Path, recovery: &Recovery) -> Result<(), StorageError> {
    if let Some((seq, len)) = recovery.cut {
        let path = dir.join(segment_name(seq));
        tracing::warn!(file = %path.display(), offset = len, "cutting off a torn WAL tail (a write a crash interrupted)");
        cut_to(fs, &path, len)?;
    }
    set_aside(fs, dir, recovery)
}

/// Keeps a copy of each file named as evidence, removes those to go, then
/// puts in place a received snapshot the WAL witnesses.
fn set_aside<F: FileSystem>(fs: &F, dir: &Path, recovery: &Recovery) -> Result<(), StorageError> {
    for name in &recovery.evidence {
        let path = dir.join(name);
        let copy = dir.join(format!("{name}{DAMAGED_SUFFIX}"));
        let bytes = fs.read(&path).map_err(io_err("read", &path))?;
        match fs.write_synced(&copy, &bytes) {
            Ok(()) => {}
            // The copy is for forensics: a full disk must not stop the repair.
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => {
                tracing::warn!(file = %path.display(), "disk full: setting damage aside without keeping a copy");
                let _ = fs.remove(&copy);
            }
            Err(e) => return Err(io_err("write", &copy)(e)),
        }
    }
    for name in &recovery.remove {
        let path = dir.join(name);
        fs.remove(&path).map_err(io_err("remove", &path))?;
    }
    if let Some(index) = recovery.put_in_place {
        let from = dir.join(received_name(index));
        tracing::info!(file = %from.display(), "putting in place a snapshot whose install the WAL records");
        fs.rename(&from, &dir.join(snapshot_name(index)))
            .map_err(io_err("rename", &from))?;
    }
    fs.sync_dir(dir).map_err(io_err("sync directory", dir))
}

fn cut_to<F: FileSystem>(fs: &F, path: &Path, len: u64) -> Result<(), StorageError> {
    let mut file = fs.open_append(path).map_err(io_err("open", path))?;
    file.truncate(len).map_err(io_err("truncate", path))
}

/// Damage: this node may have lost what it acknowledged. Sets the damage
/// aside and marks the node recovering, in an order a crash cannot undo:
/// the repair marker first, the recovering hard state in a new segment
/// last, and only then the marker goes.
fn repair<F: FileSystem>(
    fs: &F,
    dir: &Path,
    recovery: &mut Recovery,
    listing: &DirListing,
    rewrite_meta: Option<&DataDirMeta>,
) -> Result<(), StorageError> {
    for d in &recovery.damage {
        tracing::error!(dir = %dir.display(), damage = %d, "storage damaged");
    }
    tracing::warn!(
        dir = %dir.display(),
        "setting damaged files aside (*{DAMAGED_SUFFIX}); this node starts recovering and votes \
         again once a leader has repaired it"
    );
    let marker = dir.join(REPAIR_MARKER);
    if !listing.repair_marker {
        fs.write_synced(&marker, b"a repair of this data dir is under way\n")
            .map_err(io_err("write", &marker))?;
        fs.sync_dir(dir).map_err(io_err("sync directory", dir))?;
    }
    set_aside(fs, dir, recovery)?;
    if let Some((seq, len)) = recovery.cut {
        cut_to(fs, &dir.join(segment_name(seq)), len)?;
    }
    if let Some(meta) = rewrite_meta {
        write_meta(fs, dir, meta)?;
    }
    let hard_state = recovery.recovering_hard_state();
    let seq = recovery.next_segment_seq();
    let len = write_segment(fs, dir, seq, &hard_state)?;
    recovery.segments.push(KeptSegment {
        seq,
        len,
        max_index: 0,
    });
    recovery.log.hard_state = hard_state;
    fs.remove(&marker).map_err(io_err("remove", &marker))?;
    fs.sync_dir(dir).map_err(io_err("sync directory", dir))
}

/// A new segment holding only `hard_state`, durable with its name.
fn write_segment<F: FileSystem>(
    fs: &F,
    dir: &Path,
    seq: u64,
    hard_state: &HardState,
) -> Result<u64, StorageError> {
    let path = dir.join(segment_name(seq));
    let mut buf = Vec::new();
    encode_hard_state(hard_state, &mut buf);
    let mut file = fs.open_append(&path).map_err(io_err("create", &path))?;
    file.append(&buf).map_err(io_err("append", &path))?;
    file.sync().map_err(io_err("fdatasync", &path))?;
    fs.sync_dir(dir).map_err(io_err("sync directory", dir))?;
    Ok(buf.len() as u64)
}

/// Start-up durability: every segment and the snapshot in use, the dir and
/// its parent, fsynced before the node trusts any of it.
fn make_durable<F: FileSystem>(
    fs: &F,
    dir: &Path,
    recovery: &Recovery,
) -> Result<(), StorageError> {
    for seg in &recovery.segments {
        let path = dir.join(segment_name(seg.seq));
        fs.sync_file(&path).map_err(io_err("fsync", &path))?;
    }
    if let Some(info) = recovery.snapshot {
        let path = dir.join(snapshot_name(info.meta.index));
        fs.sync_file(&path).map_err(io_err("fsync", &path))?;
    }
    let meta = dir.join(META_FILE);
    fs.sync_file(&meta).map_err(io_err("fsync", &meta))?;
    fs.sync_dir(dir).map_err(io_err("sync directory", dir))?;
    sync_parent(fs, dir)
}

/// What a data dir holds, read without changing anything (`kv-server check`).
#[derive(Debug, Clone)]
pub struct Inspection {
    /// The files by kind.
    pub listing: DirListing,
    /// The identity file (None: missing).
    pub meta: Option<Result<DataDirMeta, MetaError>>,
    /// Another process holds the lock (its files may change while read).
    pub in_use: bool,
    /// Bytes of each segment, by sequence number.
    pub segment_bytes: Vec<(u64, u64)>,
    /// The snapshot recovery would use.
    pub snapshot: Option<SnapshotMeta>,
    /// The file it is in now: a received snapshot whose install the WAL
    /// records is still under its received name until the next start puts
    /// it in place.
    pub snapshot_file: Option<String>,
    /// Snapshot files that do not check out, and why.
    pub bad_snapshots: Vec<(u64, String)>,
    /// Received snapshot files that do not check out (a start sets them
    /// aside).
    pub bad_received: Vec<String>,
    /// What a start would find: intact, empty or damaged.
    pub found: Found,
    /// What is damaged.
    pub damage: Vec<Damage>,
    /// The hard state a start would recover.
    pub hard_state: HardState,
    /// First and last log index a start would recover.
    pub first_index: u64,
    /// Last log index.
    pub last_index: u64,
    /// A torn tail a start would cut: (segment, length kept).
    pub torn_tail: Option<(u64, u64)>,
}

/// Reads a data dir as `open` would, changing nothing.
pub fn inspect<F: FileSystem>(fs: &F, dir: &Path) -> Result<Inspection, StorageError> {
    let names = fs.list(dir).map_err(io_err("list", dir))?;
    let listing = DirListing::from_names(&names);
    // Only a lock file that exists can be held; reading creates none.
    let in_use = names.iter().any(|n| n == LOCK_FILE)
        && matches!(take_lock(fs, dir), Err(StorageError::Locked { .. }));
    let meta = read_meta(fs, dir, &listing)?;
    let mut segment_bytes = Vec::new();
    for &seq in &listing.segments {
        let path = dir.join(segment_name(seq));
        let bytes = fs.read(&path).map_err(io_err("read", &path))?;
        segment_bytes.push((seq, bytes.len() as u64));
    }
    let mut recovery = match &meta {
        Some(Err(e)) => Recovery::untrusted(
            &listing,
            Damage {
                file: META_FILE.into(),
                offset: 0,
                reason: format!("unreadable identity file: {e}"),
            },
        ),
        _ => scan(fs, dir, &listing, false)?.0,
    };
    if meta.is_none() && listing.has_data_files() {
        recovery.damage.insert(
            0,
            Damage {
                file: META_FILE.into(),
                offset: 0,
                reason: "the identity file is missing beside WAL or snapshot files".into(),
            },
        );
        recovery.found = Found::Damaged;
    }
    let bad_snapshots = recovery.bad_snapshots.clone();
    let torn_tail = recovery.cut.filter(|_| recovery.found != Found::Damaged);
    Ok(Inspection {
        listing,
        meta,
        in_use,
        segment_bytes,
        snapshot: recovery.snapshot.map(|s| s.meta),
        snapshot_file: recovery.snapshot.map(|s| match recovery.put_in_place {
            Some(index) if index == s.meta.index => received_name(index),
            _ => snapshot_name(s.meta.index),
        }),
        bad_snapshots,
        bad_received: recovery.bad_received.clone(),
        found: recovery.found,
        damage: recovery.damage.clone(),
        hard_state: recovery.log.hard_state,
        first_index: recovery.log.snapshot_index + 1,
        last_index: recovery.log.last_index(),
        torn_tail,
    })
}
