use bytes::Bytes;
use kv_engine::kv::KvStore;
use kv_engine::raft::Found;
use kv_engine::raft::SnapshotInfo;
use kv_engine::storage::meta::DataDirMeta;
use kv_engine::storage::record::{encode_entry, encode_hard_state};
use kv_engine::storage::recovery::{received_name, segment_name, snapshot_name, DAMAGED_SUFFIX};
use kv_proto::command::{command::Op, Command, Set};
use kv_proto::raft::{Entry, HardState, SnapshotMeta};

use super::*;
use crate::fs::{DiskFaults, DiskOp, MemFs};

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
        ..Default::default()
    }
}

fn opts(segment_size_bytes: u64) -> StorageOptions {
    StorageOptions {
        segment_size_bytes,
        snapshots_kept: 2,
        identity: DataDirMeta::new(1, 1),
        cut_back: None,
        cache_untrusted: false,
    }
}

fn open(fs: &MemFs) -> Result<(Storage<MemFs>, Recovered), StorageError> {
    Storage::open(fs.clone(), &dir(), opts(200))
}

fn indexes(r: &Recovered) -> Vec<u64> {
    r.entries.iter().map(|e| e.index).collect()
}

/// Writes a snapshot file at `index` (its data is a made-up state).
fn snapshot(fs: &MemFs, index: u64, term: u64) -> SnapshotInfo {
    let meta = SnapshotMeta { index, term };
    crate::snapshots::write_snapshot(fs, &dir(), meta, &state_at(index).capture()).unwrap()
}

/// A state machine whose key `at` holds `index`, telling snapshots apart.
fn state_at(index: u64) -> KvStore {
    let mut kv = KvStore::new();
    let set = Command {
        op: Some(Op::Set(Set {
            key: Bytes::from_static(b"at"),
            value: Bytes::from(index.to_string()),
        })),
        ..Default::default()
    };
    kv.apply(&set);
    kv
}

/// A snapshot taken locally at `index`: its file, then the WAL compacted.
fn save(s: &mut Storage<MemFs>, fs: &MemFs, index: u64, term: u64) -> SnapshotInfo {
    let info = snapshot(fs, index, term);
    // Test only: an in-memory file system, which has no faults unless set.
    s.compact(info.meta, &[]).unwrap();
    info
}

/// A storage with entries 1..=n of term 1, each appended and synced alone.
fn written(fs: &MemFs, n: u64, segment_size: u64) -> Storage<MemFs> {
    let (mut s, _) = Storage::open(fs.clone(), &dir(), opts(segment_size)).unwrap();
    for i in 1..=n {
        s.append(Some(&hs(1, i - 1)), &entries(i, i, 1)).unwrap();
    }
    s
}

#[test]
fn appends_survive_a_restart_and_rotate_segments() {
    let fs = MemFs::new();
    let s = written(&fs, 30, 200);
    assert!(s.segment_count() > 3, "segments rotate at 200 bytes");
    drop(s);
    fs.crash(7);
    let (_, r) = open(&fs).unwrap();
    assert_eq!(r.entries.len(), 30);
    assert_eq!(r.hard_state, hs(1, 29));
    assert_eq!(r.found, Found::Intact);
}

#[test]
fn a_fresh_dir_is_empty_and_stays_empty_until_something_is_written() {
    let fs = MemFs::new();
    let (s, r) = open(&fs).unwrap();
    assert_eq!(r.found, Found::Empty);
    drop(s);
    let (_, r) = open(&fs).unwrap();
    assert_eq!(
        r.found,
        Found::Empty,
        "a start that wrote nothing leaves it empty"
    );
}

#[test]
fn an_overwritten_suffix_stays_overwritten_after_restart() {
    let fs = MemFs::new();
    let (mut s, _) = open(&fs).unwrap();
    s.append(Some(&hs(1, 0)), &entries(1, 5, 1)).unwrap();
    s.append(Some(&hs(2, 2)), &entries(3, 3, 2)).unwrap();
    drop(s);
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
fn a_power_loss_loses_only_unsynced_writes() {
    for seed in 0..50 {
        let fs = MemFs::new();
        let mut s = written(&fs, 3, 1 << 20);
        // A write that never reaches its fsync.
        s.write(None, &entries(4, 4, 1)).unwrap();
        drop(s);
        fs.crash(seed);
        let (mut s, r) = open(&fs).unwrap();
        // The synced entries survive; the unsynced one survives only whole.
        assert!(
            matches!(r.entries.len(), 3 | 4),
            "seed {seed}: {}",
            r.entries.len()
        );
        assert_eq!(
            r.found,
            Found::Intact,
            "seed {seed}: a torn tail is not damage"
        );
        // The torn tail was cut, so later appends decode cleanly.
        s.append(Some(&hs(1, 0)), &entries(4, 4, 1)).unwrap();
        drop(s);
        assert_eq!(open(&fs).unwrap().1.entries.len(), 4, "seed {seed}");
    }
}

#[test]
fn what_a_dead_process_left_in_the_page_cache_is_made_durable_before_it_is_trusted() {
    for seed in 0..20 {
        let fs = MemFs::new();
        let mut s = written(&fs, 3, 1 << 20);
        // The process dies between its write and its fsync: the page cache
        // keeps the write (no MemFs crash), so the next start reads it.
        s.write(None, &entries(4, 6, 1)).unwrap();
        drop(s);
        let (s, r) = open(&fs).unwrap();
        assert_eq!(indexes(&r), vec![1, 2, 3, 4, 5, 6]);
        drop(s);
        // Then the power goes: what the start read must still be there.
        fs.crash(seed);
        let (_, r) = open(&fs).unwrap();
        assert_eq!(indexes(&r), vec![1, 2, 3, 4, 5, 6], "seed {seed}");
    }
}

#[test]
fn cutting_the_last_segment_at_every_byte_recovers_the_complete_records() {
    let fs = MemFs::new();
    let (mut s, _) = Storage::open(fs.clone(), &dir(), opts(1 << 20)).unwrap();
    let path = dir().join(segment_name(1));
    // The term comes first, as the core always writes it.
    s.append(Some(&hs(1, 0)), &[]).unwrap();
    let mut ends = Vec::new();
    for i in 1..=4 {
        s.append(None, &entries(i, i, 1)).unwrap();
        ends.push(fs.len(&path).unwrap());
    }
    drop(s);
    let full = fs.read(&path).unwrap();
    for cut in 0..=full.len() {
        let copy = fs.deep_copy();
        let mut f = copy.open_append(&path).unwrap();
        f.truncate(cut as u64).unwrap();
        let (_, r) =
            Storage::open(copy, &dir(), opts(1 << 20)).unwrap_or_else(|e| panic!("cut {cut}: {e}"));
        let complete = ends.iter().filter(|&&e| e <= cut).count();
        assert_eq!(r.entries.len(), complete, "cut at {cut}");
        assert_ne!(r.found, Found::Damaged, "cut at {cut}");
    }
}

#[test]
fn a_bad_record_mid_log_is_set_aside_and_the_node_starts_recovering() {
    let fs = MemFs::new();
    drop(written(&fs, 5, 1 << 20));
    let path = dir().join(segment_name(1));
    fs.corrupt(&path, 80, 2).unwrap();
    let (s, r) = open(&fs).unwrap();
    assert_eq!(r.found, Found::Damaged);
    let why = r.damage[0].to_string();
    assert!(
        why.contains("wal-00000000000000000001.log") && why.contains("offset"),
        "{why}"
    );
    assert!(r.hard_state.recovering, "the recovering mark is durable");
    let kept = indexes(&r);
    assert!(
        !kept.is_empty() && kept.len() < 5,
        "the prefix before the damage: {kept:?}"
    );
    assert!(fs
        .read(&dir().join(format!("wal-00000000000000000001.log{DAMAGED_SUFFIX}")))
        .is_ok());
    drop(s);
    // The next start finds a clean WAL that says the node is recovering.
    let (_, again) = open(&fs).unwrap();
    assert_eq!(again.found, Found::Intact);
    assert!(again.hard_state.recovering);
    assert_eq!(indexes(&again), kept);
}

#[test]
fn a_missing_segment_is_damage_and_what_follows_it_is_set_aside() {
    let fs = MemFs::new();
    drop(written(&fs, 30, 200));
    fs.remove(&dir().join(segment_name(2))).unwrap();
    fs.sync_dir(&dir()).unwrap();
    let (_, r) = open(&fs).unwrap();
    assert_eq!(r.found, Found::Damaged);
    assert!(
        r.damage[0].reason.contains("segment missing"),
        "{:?}",
        r.damage
    );
    assert!(r.hard_state.recovering);
}

#[test]
fn a_repair_interrupted_at_any_step_still_leaves_the_node_recovering() {
    let damaged = MemFs::new();
    drop(written(&damaged, 12, 200));
    damaged
        .corrupt(&dir().join(segment_name(2)), 30, 1)
        .unwrap();
    let mut completed = false;
    for step in 0..60 {
        let fs = damaged.deep_copy();
        fs.set_faults(DiskFaults {
            dies_after: Some(step),
            ..Default::default()
        });
        completed = open(&fs).is_ok();
        fs.crash(step as u64);
        fs.set_faults(DiskFaults::default());
        let (_, r) = open(&fs).unwrap();
        assert!(
            r.found == Found::Damaged || r.hard_state.recovering,
            "a crash at step {step} of the repair lost the recovering mark: {r:?}"
        );
        if completed {
            break;
        }
    }
    assert!(
        completed,
        "the repair finishes within 60 changes to the disk"
    );
}

#[test]
fn a_failed_fsync_is_never_taken_for_a_durable_write() {
    let fs = MemFs::new();
    let mut s = written(&fs, 3, 1 << 20);
    fs.fail_next(DiskOp::Sync, 1);
    assert!(s.append(Some(&hs(1, 3)), &entries(4, 5, 1)).is_err());
    assert!(
        s.append(None, &entries(4, 4, 1)).is_err(),
        "no write after a failed one: it must be reopened"
    );
    let cut_back = s.cut_back();
    drop(s);
    let mut o = opts(1 << 20);
    o.cut_back = cut_back;
    let (mut s, r) = Storage::open(fs.clone(), &dir(), o).unwrap();
    assert_eq!(
        indexes(&r),
        vec![1, 2, 3],
        "what the failed fsync covered is gone"
    );
    s.append(Some(&hs(1, 3)), &entries(4, 6, 1)).unwrap();
    drop(s);
    fs.crash(3);
    let (_, r) = open(&fs).unwrap();
    assert_eq!(
        r.found,
        Found::Intact,
        "no hole where the failed pages were"
    );
    assert_eq!(indexes(&r), vec![1, 2, 3, 4, 5, 6]);
}

#[test]
fn a_full_disk_fails_the_write_and_works_again_once_space_is_freed() {
    let fs = MemFs::new();
    let mut s = written(&fs, 3, 1 << 20);
    fs.set_capacity(Some(fs.used_bytes() + 10));
    let err = s.append(Some(&hs(1, 3)), &entries(4, 8, 1)).unwrap_err();
    assert!(err.to_string().contains("ENOSPC"), "{err}");
    let cut_back = s.cut_back();
    drop(s);
    fs.set_capacity(None);
    let mut o = opts(1 << 20);
    o.cut_back = cut_back;
    let (mut s, r) = Storage::open(fs.clone(), &dir(), o).unwrap();
    assert_eq!(indexes(&r), vec![1, 2, 3]);
    s.append(Some(&hs(1, 3)), &entries(4, 8, 1)).unwrap();
    drop(s);
    assert_eq!(open(&fs).unwrap().1.entries.len(), 8);
}

#[test]
fn a_second_process_on_the_same_dir_is_refused() {
    let fs = MemFs::new();
    let (first, _) = open(&fs).unwrap();
    let err = open(&fs).err().expect("the dir is locked");
    assert!(matches!(err, StorageError::Locked { .. }), "{err}");
    assert!(
        err.to_string().contains("in use by another process"),
        "{err}"
    );
    drop(first);
    assert!(open(&fs).is_ok(), "the lock goes with its holder");
}

#[test]
fn a_dir_of_another_node_or_cluster_is_refused_naming_both() {
    let fs = MemFs::new();
    drop(written(&fs, 2, 1 << 20));
    let mut other = opts(1 << 20);
    other.identity = DataDirMeta::new(1, 2);
    let err = Storage::open(fs.clone(), &dir(), other.clone())
        .err()
        .expect("node 2 is not node 1");
    let msg = err.to_string();
    assert!(
        msg.contains("belongs to node 1") && msg.contains("this is node 2"),
        "{msg}"
    );
    other.identity = DataDirMeta::new(9, 1);
    let err = Storage::open(fs.clone(), &dir(), other)
        .err()
        .expect("cluster 9 is not 1");
    assert!(
        err.to_string().contains("of cluster 1") && err.to_string().contains("cluster 9"),
        "{err}"
    );
    assert_eq!(open(&fs).unwrap().1.entries.len(), 2, "nothing was touched");
}

#[test]
fn a_damaged_identity_file_sets_everything_aside() {
    let fs = MemFs::new();
    drop(written(&fs, 4, 1 << 20));
    fs.corrupt(&dir().join("meta"), 12, 0).unwrap();
    let (_, r) = open(&fs).unwrap();
    assert_eq!(r.found, Found::Damaged);
    assert!(r.entries.is_empty());
    assert!(r.hard_state.recovering);
    assert!(fs
        .read(&dir().join(format!("{}{DAMAGED_SUFFIX}", segment_name(1))))
        .is_ok());
}

#[test]
fn a_snapshot_compacts_covered_segments_and_restart_gives_the_same_state() {
    let fs = MemFs::new();
    let (mut s, _) = open(&fs).unwrap();
    for i in 1..=40 {
        s.append(Some(&hs(1, i)), &entries(i, i, 1)).unwrap();
    }
    let before = s.segment_count();
    let saved = save(&mut s, &fs, 30, 1);
    assert!(s.segment_count() < before, "covered segments removed");
    drop(s);
    let (_, r) = open(&fs).unwrap();
    assert_eq!(r.snapshot, Some(saved));
    assert_eq!(
        r.state.digest(),
        state_at(30).digest(),
        "state rebuilt from it"
    );
    assert_eq!(r.entries.first().map(|e| e.index), Some(31));
    assert_eq!(r.entries.last().map(|e| e.index), Some(40));
    assert_eq!(r.hard_state, hs(1, 40));
}

#[test]
fn a_snapshot_still_being_sent_outlives_the_newer_ones() {
    let fs = MemFs::new();
    let (mut s, _) = open(&fs).unwrap();
    s.append(Some(&hs(1, 50)), &entries(1, 50, 1)).unwrap();
    let snapshots = |fs: &MemFs| -> Vec<u64> {
        let names: Vec<String> = fs
            .files_in(&dir())
            .iter()
            .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
            .collect();
        DirListing::from_names(&names).snapshots
    };
    save(&mut s, &fs, 10, 1);
    save(&mut s, &fs, 20, 1);
    for index in [30, 40] {
        let info = snapshot(&fs, index, 1);
        s.compact(info.meta, &[10, 20]).unwrap();
    }
    assert_eq!(snapshots(&fs), vec![40, 30, 20, 10], "10 and 20 are sent");
    let info = snapshot(&fs, 41, 1);
    // Test only: an in-memory file system, which has no faults unless set.
    s.compact(info.meta, &[]).unwrap();
    assert_eq!(snapshots(&fs), vec![41, 40], "the newest two otherwise");
}

#[test]
fn an_installed_snapshot_replaces_the_whole_log() {
    let fs = MemFs::new();
    let (mut s, _) = open(&fs).unwrap();
    s.append(Some(&hs(1, 2)), &entries(1, 10, 1)).unwrap();
    let installed = snapshot(&fs, 50, 3);
    s.install_snapshot(installed.meta, None).unwrap();
    s.append(Some(&hs(3, 51)), &entries(51, 51, 3)).unwrap();
    drop(s);
    let (_, r) = open(&fs).unwrap();
    assert_eq!(r.snapshot.map(|s| s.meta.index), Some(50));
    assert_eq!(indexes(&r), vec![51]);
}

#[test]
fn a_damaged_newest_snapshot_the_wal_cannot_bridge_makes_the_node_recover() {
    let fs = MemFs::new();
    let (mut s, _) = open(&fs).unwrap();
    for i in 1..=40 {
        s.append(Some(&hs(1, i)), &entries(i, i, 1)).unwrap();
    }
    save(&mut s, &fs, 10, 1);
    save(&mut s, &fs, 35, 1);
    drop(s);
    fs.corrupt(&dir().join(snapshot_name(35)), 40, 0).unwrap();
    // Segments up to 35 are gone, so the older snapshot at 10 cannot be
    // completed from the WAL: the node recovers from the leader.
    let (_, r) = open(&fs).unwrap();
    assert_eq!(r.found, Found::Damaged);
    assert_eq!(r.snapshot.map(|s| s.meta.index), Some(10));
    assert_eq!(
        r.state.digest(),
        state_at(10).digest(),
        "the older one's state"
    );
    assert!(r.hard_state.recovering);
    assert!(fs
        .read(&dir().join(format!("{}{DAMAGED_SUFFIX}", snapshot_name(35))))
        .is_ok());
}

#[test]
fn hard_state_is_written_ahead_of_its_entries() {
    // A torn batch can keep its hard state without its entries, never the
    // reverse: an entry never outlives a recovering mark written with it.
    let fs = MemFs::new();
    let (mut s, _) = open(&fs).unwrap();
    let marked = HardState {
        term: 2,
        recovering: true,
        ..Default::default()
    };
    s.write(Some(&marked), &entries(1, 3, 2)).unwrap();
    let bytes = fs.read(&dir().join(segment_name(1))).unwrap();
    let mut entry_bytes = Vec::new();
    encode_entry(&entries(1, 1, 2)[0], &mut entry_bytes);
    let entry_at = bytes
        .windows(entry_bytes.len())
        .position(|w| w == entry_bytes.as_slice())
        .unwrap();
    assert!(entry_at > 0, "the hard state record comes first");
}

#[test]
fn a_failed_fsync_is_cut_back_at_once_so_a_new_process_cannot_trust_its_pages() {
    let fs = MemFs::new();
    let mut s = written(&fs, 3, 1 << 20);
    fs.fail_next(DiskOp::Sync, 1);
    assert!(s.append(Some(&hs(1, 3)), &entries(4, 5, 1)).is_err());
    // The process dies here: no hint of what to cut survives it.
    drop(s);
    let (s, r) = open(&fs).unwrap();
    assert_eq!(
        indexes(&r),
        vec![1, 2, 3],
        "the failed pages are not read back"
    );
    drop(s);
    fs.crash(1);
    let (_, r) = open(&fs).unwrap();
    assert_eq!(r.found, Found::Intact);
    assert_eq!(indexes(&r), vec![1, 2, 3]);
}

#[test]
fn after_a_failed_start_up_fsync_nothing_the_page_cache_shows_is_trusted() {
    let fs = MemFs::new();
    drop(written(&fs, 3, 1 << 20));
    // A killed process left entries 4..=5 in the page cache, unsynced.
    let mut batch = Vec::new();
    encode_entry(&entries(4, 5, 1)[0], &mut batch);
    encode_entry(&entries(4, 5, 1)[1], &mut batch);
    let path = dir().join(segment_name(1));
    fs.open_append(&path).unwrap().append(&batch).unwrap();
    // The next start's fsync fails: those pages stay clean, never written.
    fs.fail_next(DiskOp::Sync, 1);
    let failed = open(&fs).err().expect("the start-up fsync fails");
    assert!(failed.is_failed_fsync(), "{failed}");
    // The cache still shows entries 4..=5 and an fsync now succeeds, yet
    // the disk holds zeros there: a retry must not trust any of it.
    let mut untrusting = opts(200);
    untrusting.cache_untrusted = true;
    let (_, r) = Storage::open(fs.clone(), &dir(), untrusting).unwrap();
    assert_eq!(r.found, Found::Damaged);
    assert!(r.entries.is_empty(), "{:?}", indexes(&r));
    // The decision survives a power loss: the node is still recovering.
    fs.crash(1);
    let (_, r) = open(&fs).unwrap();
    assert!(r.entries.is_empty(), "{:?}", indexes(&r));
}

#[test]
fn a_torn_batch_keeps_no_commit_index_over_the_stale_entries_it_was_replacing() {
    let fs = MemFs::new();
    let mut s = written(&fs, 5, 1 << 20);
    let path = dir().join(segment_name(1));
    let before = fs.len(&path).unwrap();
    // Entries 3..=5 of term 1 are replaced by term 2's, committed at once.
    s.write(Some(&hs(2, 5)), &entries(3, 5, 2)).unwrap();
    drop(s);
    // A torn write keeps only the batch's leading hard state.
    let mut leading = Vec::new();
    encode_hard_state(&hs(2, 2), &mut leading);
    fs.open_append(&path)
        .unwrap()
        .truncate((before + leading.len()) as u64)
        .unwrap();
    let (_, r) = open(&fs).unwrap();
    assert_eq!(r.entries.len(), 5);
    assert_eq!(r.entries[2].term, 1, "the stale entries are still there");
    assert!(
        r.hard_state.commit <= 2,
        "but no commit index covers them: {:?}",
        r.hard_state
    );
}

#[test]
fn an_installed_snapshot_carries_the_hard_state_written_with_it() {
    let fs = MemFs::new();
    let (mut s, _) = open(&fs).unwrap();
    let info = snapshot(&fs, 40, 3);
    let marked = HardState {
        term: 3,
        commit: 40,
        recovering: true,
        ..Default::default()
    };
    s.install_snapshot(info.meta, Some(&marked)).unwrap();
    drop(s);
    fs.crash(5);
    let (_, r) = open(&fs).unwrap();
    assert!(
        r.hard_state.recovering,
        "the mark is in the marker's segment: {r:?}"
    );
}

#[test]
fn a_damaged_snapshot_the_wal_does_not_reach_past_is_damage() {
    let fs = MemFs::new();
    let mut s = written(&fs, 30, 200);
    s.append(Some(&hs(1, 30)), &[]).unwrap();
    save(&mut s, &fs, 30, 1);
    drop(s);
    fs.corrupt(&dir().join(snapshot_name(30)), 30, 1).unwrap();
    let (_, r) = open(&fs).unwrap();
    assert_eq!(r.found, Found::Damaged, "entries up to 30 are gone: {r:?}");
}

#[test]
fn a_snapshot_install_that_never_reached_the_wal_is_dropped_not_trusted() {
    // A wiped node's first message was a snapshot: its file is durable, the
    // WAL never recorded it (nor a recovering mark). It must not start as a
    // voter with that state: the dir counts as empty again.
    let fs = MemFs::new();
    drop(open(&fs).unwrap());
    snapshot(&fs, 12, 4);
    let (_, r) = open(&fs).unwrap();
    assert_eq!((r.found, r.snapshot), (Found::Empty, None), "{r:?}");
    assert!(fs.read(&dir().join(snapshot_name(12))).is_err(), "dropped");

    // A node at term 2 whose install of a term-4 snapshot was cut short keeps
    // its own log; nothing it acknowledged is missing, so no damage.
    let fs = MemFs::new();
    drop(written(&fs, 5, 1 << 20));
    let mut s = open(&fs).unwrap().0;
    s.append(Some(&hs(2, 5)), &[]).unwrap();
    drop(s);
    snapshot(&fs, 40, 4);
    let (_, r) = open(&fs).unwrap();
    assert_eq!(r.found, Found::Intact);
    assert_eq!((r.snapshot, indexes(&r).len()), (None, 5));
    assert!(r.state.is_empty(), "nothing from the dropped snapshot");
}

#[test]
fn a_snapshot_the_wal_holds_with_another_term_at_its_index_is_an_unfinished_install() {
    // A deposed leader's log: entries 1..=10 of term 1, of which only 1..=5
    // were committed; it has since learned term 3.
    let deposed = || {
        let fs = MemFs::new();
        let mut s = written(&fs, 10, 1 << 20);
        // Test only: an in-memory file system, which has no faults unless set.
        s.append(Some(&hs(3, 5)), &[]).unwrap();
        fs
    };
    // The leader's snapshot at 8 (term 2) reached its file, not the WAL.
    let fs = deposed();
    snapshot(&fs, 8, 2);
    // Test only: an in-memory file system, which has no faults unless set.
    let (_, r) = open(&fs).unwrap();
    assert_eq!(r.found, Found::Intact);
    assert_eq!(r.snapshot, None, "the WAL holds entry 8 of term 1");
    assert_eq!(indexes(&r), (1..=10).collect::<Vec<_>>());
    assert!(r.state.is_empty(), "nothing from the dropped snapshot");

    // A snapshot the node took itself at 8 agrees with its WAL there.
    let fs = deposed();
    snapshot(&fs, 8, 1);
    // Test only: an in-memory file system, which has no faults unless set.
    let (_, r) = open(&fs).unwrap();
    assert_eq!(
        r.snapshot.map(|s| s.meta),
        Some(SnapshotMeta { index: 8, term: 1 })
    );
    assert_eq!(indexes(&r), vec![9, 10]);
}

#[test]
fn an_install_whose_marker_never_reached_the_disk_is_not_built_on() {
    // Simulation seed 21698: a deposed leader (entries 6..=10 of term 1 never
    // committed, a snapshot of its own at 5) is sent the leader's snapshot
    // at 8, and the fsync of the install's marker fails.
    let fs = MemFs::new();
    let mut s = written(&fs, 10, 1 << 20);
    save(&mut s, &fs, 5, 1);
    // Test only: an in-memory file system, which has no faults unless set.
    s.append(Some(&hs(3, 5)), &[]).unwrap();
    let received = snapshot(&fs, 8, 2);
    fs.fail_next(DiskOp::Sync, 1);
    assert!(s.install_snapshot(received.meta, Some(&hs(3, 8))).is_err());
    let mut reopen = opts(200);
    reopen.cut_back = s.cut_back();
    drop(s);
    // The node reopens its data dir. Had it trusted the marker its page
    // cache still showed, it would have built on snapshot 8; a power loss
    // would then take the marker, and with snapshot 8's file damaged too,
    // snapshot 5 and the WAL would bring back entries 6..=8 of term 1
    // under a commit index past them.
    let (s, r) = Storage::open(fs.clone(), &dir(), reopen).unwrap();
    let recovered = |r: &Recovered| (r.snapshot.map(|s| s.meta.index), indexes(r));
    let before = recovered(&r);
    assert_eq!(before, (Some(5), (6..=10).collect()), "the old log: {r:?}");
    assert_eq!(r.hard_state.commit, 5);
    drop(s);
    fs.crash(1);
    // Test only: an in-memory file system, which has no faults unless set.
    let (_, r) = open(&fs).unwrap();
    assert_eq!(
        recovered(&r),
        before,
        "what it trusted survives a power loss"
    );
}

/// The file of a snapshot received from a leader, as the receiving task
/// leaves it: complete and durable, not yet in place.
fn received(fs: &MemFs, index: u64, term: u64) -> SnapshotInfo {
    let meta = SnapshotMeta { index, term };
    // Test only: an in-memory file system, which has no faults unless set.
    let mut file = crate::snapshots::SnapshotFileOut::start_received(fs, &dir(), meta).unwrap();
    // Test only: an in-memory file system, which has no faults unless set.
    file.append_all(&state_at(index).capture()).unwrap();
    // Test only: an in-memory file system, which has no faults unless set.
    file.finish().unwrap()
}

#[test]
fn a_received_snapshot_the_wal_never_recorded_is_never_trusted_wherever_the_wal_stops() {
    // The review's case: the WAL stops short of the snapshot's index, so it
    // holds no entry there to disagree with, and the node's term is already
    // the snapshot's. Whatever the WAL holds, a received file without its
    // install's marker is dropped, and the node keeps its own log.
    for last in [3, 8, 12] {
        let fs = MemFs::new();
        let mut s = written(&fs, last, 1 << 20);
        // Test only: an in-memory file system, which has no faults unless set.
        s.append(Some(&hs(3, 2)), &[]).unwrap();
        drop(s);
        received(&fs, 8, 3);
        fs.crash(1);
        // Test only: an in-memory file system, which has no faults unless set.
        let (_, r) = open(&fs).unwrap();
        assert_eq!(
            (r.found, r.snapshot),
            (Found::Intact, None),
            "WAL to {last}"
        );
        assert_eq!(indexes(&r), (1..=last).collect::<Vec<_>>(), "WAL to {last}");
        assert!(
            fs.read(&dir().join(received_name(8))).is_err(),
            "the leftover is removed"
        );
    }
}

/// Entries 1..=5, then the install of a snapshot at 8 received from a
/// leader: its marker is durable, and the machine dies at the rename.
fn install_cut_short_at_its_rename() -> (MemFs, SnapshotInfo) {
    let fs = MemFs::new();
    let mut s = written(&fs, 5, 1 << 20);
    let info = received(&fs, 8, 2);
    fs.fail_next(DiskOp::Rename, 1);
    assert!(s.install_snapshot(info.meta, Some(&hs(2, 8))).is_err());
    drop(s);
    fs.crash(1);
    (fs, info)
}

#[test]
fn a_received_snapshot_whose_marker_is_durable_is_put_in_place_at_start() {
    let (fs, info) = install_cut_short_at_its_rename();
    // Test only: an in-memory file system, which has no faults unless set.
    let (_, r) = open(&fs).unwrap();
    assert_eq!(r.found, Found::Intact);
    assert_eq!(r.snapshot.map(|s| s.meta), Some(info.meta));
    assert!(r.entries.is_empty(), "{:?}", indexes(&r));
    assert!(fs.read(&dir().join(snapshot_name(8))).is_ok(), "in place");
}

/// `kv-server check` names the file a snapshot is in now: a witnessed
/// install not yet put in place is still under its received name.
#[test]
fn inspection_names_a_received_snapshot_by_the_file_it_is_in_until_put_in_place() {
    let (fs, info) = install_cut_short_at_its_rename();
    // Test only: an in-memory file system, which has no faults unless set.
    let seen = inspect(&fs, &dir()).unwrap();
    assert_eq!(seen.snapshot, Some(info.meta));
    assert_eq!(seen.snapshot_file, Some(received_name(8)));
    // Test only: an in-memory file system, which has no faults unless set.
    open(&fs).unwrap();
    // Test only: an in-memory file system, which has no faults unless set.
    let seen = inspect(&fs, &dir()).unwrap();
    assert_eq!(seen.snapshot_file, Some(snapshot_name(8)));
}

/// A received file is renamed to its received name only once complete and
/// synced, so one that does not check out was damaged on this disk: it
/// goes, and a copy is kept as of any damaged file.
#[test]
fn a_received_snapshot_that_does_not_check_out_is_set_aside_with_a_copy() {
    let (fs, _) = install_cut_short_at_its_rename();
    // Test only: an in-memory file system, which has no faults unless set.
    fs.corrupt(&dir().join(received_name(8)), 40, 0).unwrap();
    // Test only: an in-memory file system, which has no faults unless set.
    let seen = inspect(&fs, &dir()).unwrap();
    assert_eq!(seen.bad_received, vec![received_name(8)], "check names it");
    // Test only: an in-memory file system, which has no faults unless set.
    let (_, r) = open(&fs).unwrap();
    // The WAL records the install, so losing the file is damage.
    assert_eq!(r.found, Found::Damaged);
    assert!(fs.read(&dir().join(received_name(8))).is_err(), "removed");
    assert!(
        fs.read(&dir().join(format!("{}{DAMAGED_SUFFIX}", received_name(8))))
            .is_ok(),
        "a copy kept"
    );
}

#[test]
fn received_snapshots_the_node_no_longer_needs_go_with_the_next_compaction() {
    let fs = MemFs::new();
    let mut s = written(&fs, 12, 200);
    // Received, but the node caught up by appends before installing it.
    received(&fs, 8, 1);
    // Still waiting for its install.
    received(&fs, 30, 2);
    save(&mut s, &fs, 10, 1);
    assert!(
        fs.read(&dir().join(received_name(8))).is_err(),
        "not needed"
    );
    assert!(
        fs.read(&dir().join(received_name(30))).is_ok(),
        "may be installed"
    );
}

#[test]
fn a_segment_cut_back_to_nothing_gets_the_hard_state_so_compaction_cannot_lose_it() {
    let fs = MemFs::new();
    let mut s = written(&fs, 10, 1 << 20);
    // Test only: an in-memory file system, which has no faults unless set.
    s.append(Some(&hs(3, 10)), &[]).unwrap();
    // An install whose new segment fails its fsync: cut back to nothing.
    let info = received(&fs, 20, 3);
    fs.fail_next(DiskOp::Sync, 1);
    assert!(s.install_snapshot(info.meta, Some(&hs(3, 20))).is_err());
    let mut reopen = opts(1 << 20);
    reopen.cut_back = s.cut_back();
    drop(s);
    // Test only: an in-memory file system, which has no faults unless set.
    let (mut s, r) = Storage::open(fs.clone(), &dir(), reopen).unwrap();
    assert_eq!(r.hard_state, hs(3, 10));
    // A local snapshot at 10 compacts the segment that held the hard state.
    save(&mut s, &fs, 10, 1);
    drop(s);
    fs.crash(1);
    // Test only: an in-memory file system, which has no faults unless set.
    let (_, r) = open(&fs).unwrap();
    assert_eq!(r.found, Found::Intact, "{r:?}");
    assert_eq!(r.hard_state, hs(3, 10), "term, vote and commit survive");
    assert_eq!(r.snapshot.map(|s| s.meta.index), Some(10));
}

/// A state machine of `keys` keys: its snapshot spans several chunks.
fn many_keys(keys: u64) -> KvStore {
    let mut kv = KvStore::new();
    for i in 0..keys {
        kv.apply(&Command {
            op: Some(Op::Set(Set {
                key: Bytes::from(format!("key{i}")),
                value: Bytes::from(format!("value{i}")),
            })),
            ..Default::default()
        });
    }
    kv
}

/// What a follower does with a snapshot from the leader: the file written
/// chunk by chunk as chunks arrive, then the WAL told the log restarts after it.
fn receive_and_install(
    fs: &MemFs,
    state: &KvStore,
    meta: SnapshotMeta,
) -> Result<(), StorageError> {
    let (mut s, _) = open(fs)?;
    let mut file = crate::snapshots::SnapshotFileOut::start_received(fs, &dir(), meta)?;
    let captured = state.capture();
    let mut encoder = captured.encoder();
    let mut chunk = Vec::new();
    loop {
        chunk.clear();
        let more = encoder.next_chunk(&mut chunk, 4096);
        file.append(&chunk)?;
        if !more {
            break;
        }
    }
    file.finish()?;
    s.install_snapshot(meta, Some(&hs(meta.term, meta.index)))
}

/// An install cut short after any change to the disk, then power lost: the
/// node comes back with its old log or with the whole snapshot, never with
/// part of one, and never damaged.
#[test]
fn a_snapshot_install_cut_short_at_any_step_leaves_the_old_log_or_the_whole_snapshot() {
    let base = MemFs::new();
    drop(written(&base, 10, 200));
    let new_state = many_keys(2_000);
    let meta = SnapshotMeta { index: 50, term: 2 };
    let mut finished = false;
    let mut outcomes = (0, 0);
    for step in 0..400 {
        let fs = base.deep_copy();
        fs.set_faults(DiskFaults {
            dies_after: Some(step),
            ..Default::default()
        });
        finished = receive_and_install(&fs, &new_state, meta).is_ok();
        fs.crash(u64::from(step));
        fs.set_faults(DiskFaults::default());
        let (_, r) = open(&fs).unwrap();
        assert_eq!(r.found, Found::Intact, "step {step}: {r:?}");
        match r.snapshot {
            None => {
                assert_eq!(indexes(&r), (1..=10).collect::<Vec<_>>(), "step {step}");
                assert!(r.state.is_empty(), "step {step}");
                outcomes.0 += 1;
            }
            Some(info) => {
                assert_eq!(info.meta, meta, "step {step}");
                assert_eq!(r.state.digest(), new_state.digest(), "step {step}");
                assert_eq!(r.state.len(), 2_000, "step {step}");
                assert!(r.entries.is_empty(), "step {step}: {:?}", indexes(&r));
                outcomes.1 += 1;
            }
        }
        if finished {
            assert!(r.snapshot.is_some(), "a finished install survives");
            break;
        }
    }
    assert!(
        finished,
        "the install finishes within 400 changes to the disk"
    );
    assert!(outcomes.0 > 10 && outcomes.1 > 0, "{outcomes:?}");
}

/// A snapshot taken locally, cut short after any change to the disk: the
/// node comes back with the same state, from the snapshot or from its log.
#[test]
fn a_local_snapshot_cut_short_at_any_step_loses_nothing() {
    let base = MemFs::new();
    drop(written(&base, 40, 200));
    let mut finished = false;
    for step in 0..200 {
        let fs = base.deep_copy();
        fs.set_faults(DiskFaults {
            dies_after: Some(step),
            ..Default::default()
        });
        finished = open(&fs).is_ok_and(|(mut s, _)| {
            let meta = SnapshotMeta { index: 30, term: 1 };
            crate::snapshots::write_snapshot(&fs, &dir(), meta, &state_at(30).capture())
                .and_then(|_| s.compact(meta, &[]))
                .is_ok()
        });
        fs.crash(u64::from(step));
        fs.set_faults(DiskFaults::default());
        let (_, r) = open(&fs).unwrap();
        assert_eq!(r.found, Found::Intact, "step {step}: {r:?}");
        let first = match r.snapshot {
            None => 1,
            Some(info) => {
                assert_eq!(r.state.digest(), state_at(30).digest(), "step {step}");
                info.meta.index + 1
            }
        };
        assert_eq!(indexes(&r), (first..=40).collect::<Vec<_>>(), "step {step}");
        if finished {
            assert_eq!(first, 31, "a finished snapshot survives");
            break;
        }
    }
    assert!(
        finished,
        "the snapshot finishes within 200 changes to the disk"
    );
}
