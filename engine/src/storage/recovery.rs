//! What a data dir holds at start, decided from its files' bytes alone.
//!
//! The runtime lists the dir ([`DirListing`]), reads the files this module
//! asks for, and carries out the [`Recovery`] it gets back. The policy:
//!
//! - The identity file (`meta`) must name this cluster and node. Another
//!   identity refuses the start (an operator's mistake, not damage). A
//!   missing or unreadable identity beside data is damage: none of that
//!   data can be trusted as this node's.
//! - The newest snapshot that checks out is used; newer ones that do not are
//!   set aside (kept as `*.damaged`).
//! - WAL segments replay in sequence order. A bad record at the very end of
//!   the last segment is a write a crash tore: it is cut off, not damage.
//!   Anything else that does not check out (a bad record followed by valid
//!   ones, a torn record in an earlier segment, a missing segment, a
//!   contradiction, a snapshot marker whose file is gone) is damage: the
//!   log is kept up to it, and everything from it on is set aside.
//! - A repair marker left by an interrupted repair is damage too.
//!
//! Damage means this node may have lost something it acknowledged, so it
//! starts *recovering* (see `raft/standing.rs`): the runtime first writes
//! the repair marker, sets files aside and cuts the damaged segment, then
//! appends [`Recovery::recovering_hard_state`] in a new segment, and only
//! then removes the marker. A crash anywhere in between finds the marker (or
//! the damage) again, so the recovering mark can never be lost.

use std::fmt;

use kv_proto::raft::{HardState, SnapshotMeta};

use super::meta::{DataDirMeta, MetaError};
use super::record::{decode_segment, Record, SegmentEnd};
use super::replay::ReplayedLog;
use crate::raft::{Found, SnapshotInfo};

/// Name of the identity file.
pub const META_FILE: &str = "meta";
/// Present while a repair of the data dir is under way.
pub const REPAIR_MARKER: &str = "REPAIRING";
/// Appended to the name of a file set aside as damaged.
pub const DAMAGED_SUFFIX: &str = ".damaged";
/// Appended to a file being written before it is renamed into place.
pub const TEMP_SUFFIX: &str = ".tmp";

/// The name of WAL segment `seq`.
pub fn segment_name(seq: u64) -> String {
    format!("wal-{seq:020}.log")
}

/// The name of the snapshot file at `index`.
pub fn snapshot_name(index: u64) -> String {
    format!("snap-{index:020}.snap")
}

/// The name a snapshot received from a leader has until its install is in
/// the WAL (its marker durable): only then is it put in place under
/// `snapshot_name`, so that every `.snap` file is either taken locally or
/// witnessed by a marker, and a later fallback to an older snapshot always
/// finds the marker that says the log was replaced.
pub fn received_name(index: u64) -> String {
    format!("snap-{index:020}.recv")
}

fn parse_number(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    name.strip_prefix(prefix)?
        .strip_suffix(suffix)?
        .parse()
        .ok()
}

/// The files of a data dir that recovery cares about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirListing {
    /// The identity file exists.
    pub meta: bool,
    /// An earlier repair was interrupted.
    pub repair_marker: bool,
    /// WAL segment sequence numbers, ascending.
    pub segments: Vec<u64>,
    /// Snapshot indexes, newest first.
    pub snapshots: Vec<u64>,
    /// Indexes of snapshots received from a leader, not yet put in place
    /// (see `received_name`), newest first.
    pub received: Vec<u64>,
    /// Leftovers of writes that never finished (removed at start).
    pub temporaries: Vec<String>,
}

impl DirListing {
    /// Sorts a directory's file names into kinds; others are ignored.
    pub fn from_names(names: &[String]) -> Self {
        let mut listing = DirListing::default();
        for name in names {
            if name == META_FILE {
                listing.meta = true;
            } else if name == REPAIR_MARKER {
                listing.repair_marker = true;
            } else if name.ends_with(TEMP_SUFFIX) {
                listing.temporaries.push(name.clone());
            } else if let Some(seq) = parse_number(name, "wal-", ".log") {
                listing.segments.push(seq);
            } else if let Some(index) = parse_number(name, "snap-", ".snap") {
                listing.snapshots.push(index);
            } else if let Some(index) = parse_number(name, "snap-", ".recv") {
                listing.received.push(index);
            }
        }
        listing.segments.sort_unstable();
        listing.snapshots.sort_unstable_by(|a, b| b.cmp(a));
        listing.received.sort_unstable_by(|a, b| b.cmp(a));
        listing
    }

    /// Whether any WAL or snapshot file exists.
    pub fn has_data_files(&self) -> bool {
        !self.segments.is_empty() || !self.snapshots.is_empty()
    }
}

/// Something found wrong, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The file (a name in the data dir).
    pub file: String,
    /// Byte offset in it.
    pub offset: u64,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at offset {}: {}",
            self.file, self.offset, self.reason
        )
    }
}

/// What the identity file says about starting as `expected`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityCheck {
    /// It names this node: go on.
    Matches,
    /// No identity and no data: a fresh dir; write the identity first.
    Fresh,
    /// It names another node or cluster: refuse to start.
    Mismatch(DataDirMeta),
    /// Unreadable, or missing beside data: nothing here can be trusted as
    /// this node's; set it all aside.
    Damaged(Damage),
}

/// Checks the identity file (`None`: there is none) against `expected`.
pub fn check_identity(
    meta: Option<Result<DataDirMeta, MetaError>>,
    expected: DataDirMeta,
    listing: &DirListing,
) -> IdentityCheck {
    match meta {
        Some(Ok(found)) if found == expected => IdentityCheck::Matches,
        Some(Ok(found)) => IdentityCheck::Mismatch(found),
        None if !listing.has_data_files() => IdentityCheck::Fresh,
        None => IdentityCheck::Damaged(Damage {
            file: META_FILE.into(),
            offset: 0,
            reason: "the identity file is missing beside WAL or snapshot files".into(),
        }),
        Some(Err(e)) => IdentityCheck::Damaged(Damage {
            file: META_FILE.into(),
            offset: 0,
            reason: format!("unreadable identity file: {e}"),
        }),
    }
}

/// Whether a snapshot file named for `index` checks out, given what reading
/// it through (`snapshot_file::stream_snapshot_file`) gave and its data size.
pub fn check_snapshot_file(
    index: u64,
    read: Result<SnapshotMeta, String>,
    size: u64,
) -> Result<SnapshotInfo, String> {
    match read {
        Ok(meta) if meta.index == index => Ok(SnapshotInfo { meta, size }),
        Ok(meta) => Err(format!(
            "holds index {} but is named for {index}",
            meta.index
        )),
        Err(e) => Err(e),
    }
}

/// A WAL segment kept as it is (or up to `len`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeptSegment {
    /// Its sequence number.
    pub seq: u64,
    /// Bytes kept (the rest is cut off).
    pub len: u64,
    /// Highest entry index in the kept bytes (0: none).
    pub max_index: u64,
}

/// Replays WAL segments in order, up to the first damage.
#[derive(Debug)]
pub struct WalScan {
    log: ReplayedLog,
    snapshot_index: u64,
    next_seq: Option<u64>,
    kept: Vec<KeptSegment>,
    cut: Option<(u64, u64)>,
    damage: Option<Damage>,
    set_aside: Vec<u64>,
    records: u64,
}

impl WalScan {
    /// A scan of a log that starts after `snapshot` (None: from the start).
    pub fn new(snapshot: Option<SnapshotMeta>) -> Self {
        let (index, term) = snapshot.map_or((0, 0), |m| (m.index, m.term));
        WalScan {
            log: ReplayedLog::new(index, term),
            snapshot_index: index,
            next_seq: None,
            kept: Vec::new(),
            cut: None,
            damage: None,
            set_aside: Vec::new(),
            records: 0,
        }
    }

    /// Whether damage was found (later segments are only set aside).
    pub fn is_damaged(&self) -> bool {
        self.damage.is_some()
    }

    /// The log replayed so far.
    pub fn log(&self) -> &ReplayedLog {
        &self.log
    }

    /// Feeds segment `seq`, in ascending order; `is_last` if no later one exists.
    pub fn feed(&mut self, seq: u64, bytes: &[u8], is_last: bool) {
        if self.damage.is_some() {
            self.set_aside.push(seq);
            return;
        }
        if let Some(expected) = self.next_seq.filter(|&e| e != seq) {
            self.damage = Some(Damage {
                file: segment_name(expected),
                offset: 0,
                reason: format!("segment missing between {} and {seq}", expected - 1),
            });
            self.set_aside.push(seq);
            return;
        }
        self.next_seq = Some(seq + 1);
        let segment = decode_segment(bytes);
        let mut max_index = 0;
        for (offset, record) in segment.records {
            if let Err(reason) = self.check_record(&record) {
                return self.damaged_at(seq, offset, max_index, reason);
            }
            if let Record::Entry(e) = &record {
                max_index = max_index.max(e.index);
            }
            if let Err(e) = self.log.apply(record) {
                return self.damaged_at(seq, offset, max_index, e.reason);
            }
            self.records += 1;
        }
        let reason = match segment.end {
            SegmentEnd::Clean => None,
            SegmentEnd::Torn(_) if is_last => {
                self.cut = Some((seq, segment.valid_len));
                None
            }
            SegmentEnd::Torn(bad) => Some(format!(
                "{bad} at the end of a segment that is not the last"
            )),
            SegmentEnd::Corrupt(c) => Some(match c.valid_after {
                Some(at) => format!("{} followed by a valid record at offset {at}", c.reason),
                None => format!(
                    "{} in a complete last record (damage, not a write a crash tore)",
                    c.reason
                ),
            }),
        };
        match reason {
            Some(reason) => self.damaged_at(seq, segment.valid_len, max_index, reason),
            None => self.kept.push(KeptSegment {
                seq,
                len: segment.valid_len,
                max_index,
            }),
        }
    }

    /// A snapshot marker may only name the snapshot in use (or an older one).
    fn check_record(&self, record: &Record) -> Result<(), String> {
        match record {
            Record::Snapshot(meta) if meta.index > self.snapshot_index => Err(format!(
                "snapshot {} was installed but its file is missing or damaged",
                meta.index
            )),
            _ => Ok(()),
        }
    }

    fn damaged_at(&mut self, seq: u64, offset: u64, max_index: u64, reason: String) {
        self.damage = Some(Damage {
            file: segment_name(seq),
            offset,
            reason,
        });
        self.kept.push(KeptSegment {
            seq,
            len: offset,
            max_index,
        });
        self.cut = Some((seq, offset));
    }
}

/// Whether `snapshot`, a file in place, is one received from a leader whose
/// install never finished: its file is durable, but the WAL never recorded
/// it. Nothing was acknowledged for it, so it is dropped, not trusted and
/// not counted as damage. Since received files are put in place only once
/// their marker is durable (`received_name`), this is a second line for
/// files put in place by older versions. Two signs tell it (a marker for it
/// in the WAL shows neither):
/// - its term is above every term the WAL's hard state reached (a snapshot
///   taken locally never has a term above the node's);
/// - the WAL holds the entry at its index with another term (a snapshot
///   taken locally covers the entry the node applied there, and an applied
///   entry is never rewritten).
///
/// Trusting such a snapshot anyway would make the node build on a log the
/// WAL does not say was replaced: were the snapshot's file lost later, an
/// older snapshot and the WAL would bring the replaced entries back as if
/// committed.
pub fn unfinished_install(snapshot: &SnapshotInfo, log: &ReplayedLog) -> bool {
    // A marker for the snapshot resets `term_at_snapshot`: entries written
    // before it no longer count.
    let disagrees = log
        .term_at_snapshot
        .is_some_and(|term| term != snapshot.meta.term);
    snapshot.meta.term > log.hard_state.term || disagrees
}

/// A node's term never falls behind the entries it holds (a batch writes
/// its hard state first): a hard state older than them was lost.
fn stale_hard_state(log: &ReplayedLog) -> Option<Damage> {
    let newest = log.entries.last().map_or(0, |e| e.term);
    (newest > log.hard_state.term).then(|| Damage {
        file: "wal".into(),
        offset: 0,
        reason: format!(
            "the last hard state (term {}) is older than the log it recovered (term {newest})",
            log.hard_state.term
        ),
    })
}

/// What to do with a data dir at start, and what it recovered.
#[derive(Debug, Clone)]
pub struct Recovery {
    /// The snapshot to restore from.
    pub snapshot: Option<SnapshotInfo>,
    /// The replayed log (hard state and entries after the snapshot).
    pub log: ReplayedLog,
    /// Segments in use, in order, with the bytes to keep.
    pub segments: Vec<KeptSegment>,
    /// Cut this segment to this length (a torn tail, or the damage point).
    pub cut: Option<(u64, u64)>,
    /// Files to keep a copy of as `<name>.damaged` before they are cut or removed.
    pub evidence: Vec<String>,
    /// Files to remove.
    pub remove: Vec<String>,
    /// Snapshot files that did not check out, and why.
    pub bad_snapshots: Vec<(u64, String)>,
    /// Received snapshot files that did not check out (see
    /// `SnapshotFindings::bad_received`).
    pub bad_received: Vec<String>,
    /// A received snapshot whose install the WAL witnesses, to be put in
    /// place (renamed from `received_name` to `snapshot_name`): the crash
    /// came between its marker and the rename.
    pub put_in_place: Option<u64>,
    /// What was wrong, the cause first.
    pub damage: Vec<Damage>,
    /// What the core is told.
    pub found: Found,
}

/// What reading the snapshot files found besides the one chosen.
#[derive(Debug, Clone, Default)]
pub struct SnapshotFindings {
    /// Files in place (`snapshot_name`) that did not check out, and why.
    pub bad: Vec<(u64, String)>,
    /// Received files (`received_name`) that did not check out. One is
    /// renamed to that name only once complete and synced, so it was
    /// damaged on this disk: it goes, a copy kept (whether losing it is
    /// damage, the WAL's install marker decides).
    pub bad_received: Vec<String>,
    /// Received files of installs that never finished or are not needed.
    pub unfinished: Vec<String>,
}

impl Recovery {
    /// Puts together the snapshot choice, the WAL scan, and what else was
    /// found (bad snapshots, an interrupted repair).
    pub fn new(
        snapshot: Option<SnapshotInfo>,
        files: SnapshotFindings,
        scan: WalScan,
        repair_marker: bool,
    ) -> Self {
        let SnapshotFindings {
            bad: bad_snapshots,
            bad_received,
            unfinished,
        } = files;
        let mut damage = Vec::new();
        if repair_marker {
            damage.push(Damage {
                file: REPAIR_MARKER.into(),
                offset: 0,
                reason: "an earlier repair of this data dir was interrupted".into(),
            });
        }
        damage.extend(scan.damage.clone());
        let log = scan.log.finish();
        damage.extend(stale_hard_state(&log));
        // A bad snapshot the WAL does not reach past: state it held is gone.
        if let Some((index, why)) = bad_snapshots.iter().find(|(i, _)| *i > log.last_index()) {
            damage.push(Damage {
                file: snapshot_name(*index),
                offset: 0,
                reason: format!("{why}, and the WAL ends at {} before it", log.last_index()),
            });
        }
        let mut evidence = Vec::new();
        let mut remove = Vec::new();
        for (index, _) in &bad_snapshots {
            evidence.push(snapshot_name(*index));
            remove.push(snapshot_name(*index));
        }
        evidence.extend(bad_received.iter().cloned());
        remove.extend(bad_received.iter().cloned());
        if let (Some((seq, _)), Some(_)) = (scan.cut, &scan.damage) {
            evidence.push(segment_name(seq));
        }
        for &seq in &scan.set_aside {
            evidence.push(segment_name(seq));
            remove.push(segment_name(seq));
        }
        remove.extend(unfinished);
        let empty =
            snapshot.is_none() && scan.records == 0 && log.hard_state == HardState::default();
        let found = if !damage.is_empty() {
            Found::Damaged
        } else if empty {
            Found::Empty
        } else {
            Found::Intact
        };
        Recovery {
            snapshot,
            log,
            segments: scan.kept,
            cut: scan.cut,
            evidence,
            remove,
            bad_snapshots,
            bad_received,
            put_in_place: None,
            damage,
            found,
        }
    }

    /// A data dir whose identity cannot be trusted: every file is set
    /// aside and the node starts recovering with nothing.
    pub fn untrusted(listing: &DirListing, cause: Damage) -> Self {
        let names: Vec<String> = listing
            .segments
            .iter()
            .map(|&s| segment_name(s))
            .chain(listing.snapshots.iter().map(|&i| snapshot_name(i)))
            .chain(listing.received.iter().map(|&i| received_name(i)))
            .collect();
        Recovery {
            snapshot: None,
            log: ReplayedLog::new(0, 0),
            segments: Vec::new(),
            cut: None,
            evidence: names.clone(),
            remove: names,
            bad_snapshots: Vec::new(),
            bad_received: Vec::new(),
            put_in_place: None,
            damage: vec![cause],
            found: Found::Damaged,
        }
    }

    /// The hard state that marks this node recovering: the highest term it
    /// knows of, its vote only if cast in that term, a commit index within
    /// what it kept.
    pub fn recovering_hard_state(&self) -> HardState {
        let hs = self.log.hard_state;
        let term = self.log.max_term();
        HardState {
            term,
            vote: if hs.term == term { hs.vote } else { 0 },
            commit: hs.commit.min(self.log.last_index()),
            recovering: true,
            repair_floor: 0,
        }
    }

    /// The sequence number a new segment takes.
    pub fn next_segment_seq(&self) -> u64 {
        self.segments.last().map_or(1, |s| s.seq + 1)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use kv_proto::raft::Entry;

    use super::*;
    use crate::storage::record::{encode_entry, encode_hard_state, encode_snapshot_marker};

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: Bytes::from(format!("e{index}")),
        }
    }

    fn hs(term: u64, vote: u64, commit: u64) -> HardState {
        HardState {
            term,
            vote,
            commit,
            ..Default::default()
        }
    }

    /// A segment: a hard state, then entries `from..=to` of `term`.
    fn segment(hard: HardState, from: u64, to: u64, term: u64) -> Vec<u8> {
        let mut out = Vec::new();
        encode_hard_state(&hard, &mut out);
        for i in from..=to {
            encode_entry(&entry(i, term), &mut out);
        }
        out
    }

    fn recover(segments: &[(u64, Vec<u8>)]) -> Recovery {
        let mut scan = WalScan::new(None);
        for (i, (seq, bytes)) in segments.iter().enumerate() {
            scan.feed(*seq, bytes, i + 1 == segments.len());
        }
        Recovery::new(None, SnapshotFindings::default(), scan, false)
    }

    #[test]
    fn a_clean_wal_is_intact_and_an_empty_one_is_empty() {
        let r = recover(&[(1, segment(hs(2, 1, 3), 1, 3, 2))]);
        assert_eq!(r.found, Found::Intact);
        assert_eq!(r.log.last_index(), 3);
        assert!(r.evidence.is_empty() && r.remove.is_empty() && r.cut.is_none());
        assert_eq!(recover(&[(1, Vec::new())]).found, Found::Empty);
        assert_eq!(recover(&[]).found, Found::Empty);
    }

    #[test]
    fn a_torn_tail_of_the_last_segment_is_cut_and_is_not_damage() {
        let mut bytes = segment(hs(1, 1, 0), 1, 3, 1);
        let full = bytes.len() as u64;
        bytes.extend_from_slice(&[9, 0, 0, 0, 1]);
        let r = recover(&[(1, bytes)]);
        assert_eq!(r.found, Found::Intact);
        assert_eq!(r.cut, Some((1, full)));
        assert!(r.evidence.is_empty());
    }

    #[test]
    fn a_bad_record_mid_log_keeps_the_prefix_and_sets_the_rest_aside() {
        let first = segment(hs(1, 1, 2), 1, 4, 1);
        let mut second = segment(hs(2, 3, 5), 5, 8, 2);
        let damaged_at = second.len() / 2;
        second[damaged_at] ^= 0x40;
        let third = segment(hs(2, 3, 9), 9, 9, 2);
        let r = recover(&[(1, first), (2, second), (3, third)]);
        assert_eq!(r.found, Found::Damaged);
        assert!(
            r.damage[0].file.contains("00002")
                && r.damage[0].reason.contains("followed by a valid record")
        );
        let (seq, len) = r.cut.unwrap();
        assert_eq!(seq, 2);
        assert!(len < damaged_at as u64);
        assert_eq!(r.evidence, vec![segment_name(2), segment_name(3)]);
        assert_eq!(r.remove, vec![segment_name(3)]);
        assert!(r.log.last_index() >= 4 && r.log.last_index() < 8);
        let hs = r.recovering_hard_state();
        assert!(hs.recovering);
        assert_eq!(hs.term, 2, "the highest term it kept");
        assert_eq!(hs.vote, 3, "its vote in that term is kept");
        assert!(hs.commit <= r.log.last_index());
        assert_eq!(r.next_segment_seq(), 3);
    }

    #[test]
    fn a_scan_says_whether_it_met_damage() {
        let mut clean = WalScan::new(None);
        clean.feed(1, &segment(hs(1, 1, 0), 1, 3, 1), true);
        assert!(!clean.is_damaged());
        let mut first = segment(hs(1, 1, 0), 1, 4, 1);
        let at = first.len() / 2;
        first[at] ^= 0x40;
        let mut damaged = WalScan::new(None);
        damaged.feed(1, &first, false);
        damaged.feed(2, &segment(hs(1, 1, 0), 5, 5, 1), true);
        assert!(damaged.is_damaged());
    }

    #[test]
    fn a_snapshot_file_must_hold_the_index_it_is_named_for() {
        let meta = SnapshotMeta { index: 7, term: 2 };
        assert_eq!(
            check_snapshot_file(7, Ok(meta), 10),
            Ok(SnapshotInfo { meta, size: 10 })
        );
        assert!(check_snapshot_file(8, Ok(meta), 10).is_err());
        assert!(check_snapshot_file(7, Err("torn".into()), 10).is_err());
    }

    #[test]
    fn a_missing_segment_is_damage_at_the_gap() {
        let r = recover(&[
            (1, segment(hs(1, 1, 0), 1, 2, 1)),
            (3, segment(hs(1, 1, 0), 5, 6, 1)),
        ]);
        assert_eq!(r.found, Found::Damaged);
        assert_eq!(r.damage[0].file, segment_name(2));
        assert_eq!(r.log.last_index(), 2);
        assert_eq!(r.remove, vec![segment_name(3)]);
        assert_eq!(r.cut, None, "segment 1 is whole");
    }

    #[test]
    fn a_marker_for_a_snapshot_whose_file_is_gone_is_damage() {
        let mut bytes = segment(hs(1, 1, 0), 1, 2, 1);
        let at = bytes.len() as u64;
        encode_snapshot_marker(&SnapshotMeta { index: 40, term: 3 }, &mut bytes);
        let r = recover(&[(1, bytes)]);
        assert_eq!(r.found, Found::Damaged);
        assert_eq!(r.cut, Some((1, at)));
        assert!(r.damage[0].reason.contains("snapshot 40"));
    }

    #[test]
    fn an_interrupted_repair_is_damage_even_over_a_clean_wal() {
        let mut scan = WalScan::new(None);
        scan.feed(1, &segment(hs(1, 1, 0), 1, 2, 1), true);
        let r = Recovery::new(None, SnapshotFindings::default(), scan, true);
        assert_eq!(r.found, Found::Damaged);
        assert_eq!(r.damage[0].file, REPAIR_MARKER);
    }

    #[test]
    fn identity_is_checked_against_the_expected_member() {
        let me = DataDirMeta::new(1, 2);
        let data = DirListing::from_names(&[segment_name(1)]);
        let none = DirListing::default();
        assert_eq!(
            check_identity(Some(Ok(me)), me, &data),
            IdentityCheck::Matches
        );
        assert_eq!(check_identity(None, me, &none), IdentityCheck::Fresh);
        let other = DataDirMeta::new(1, 3);
        assert_eq!(
            check_identity(Some(Ok(other)), me, &data),
            IdentityCheck::Mismatch(other)
        );
        assert!(matches!(
            check_identity(None, me, &data),
            IdentityCheck::Damaged(_)
        ));
        assert!(matches!(
            check_identity(Some(Err(MetaError::Checksum)), me, &data),
            IdentityCheck::Damaged(_)
        ));
    }

    #[test]
    fn listing_sorts_names_into_kinds() {
        let names: Vec<String> = [
            "meta",
            "REPAIRING",
            "wal-00000000000000000002.log",
            "wal-00000000000000000001.log",
            "snap-00000000000000000010.snap",
            "snap-00000000000000000020.snap",
            "snap-00000000000000000020.snap.tmp",
            "wal-00000000000000000001.log.damaged",
            "LOCK",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let l = DirListing::from_names(&names);
        assert!(l.meta && l.repair_marker);
        assert_eq!(l.segments, vec![1, 2]);
        assert_eq!(l.snapshots, vec![20, 10]);
        assert_eq!(
            l.temporaries,
            vec!["snap-00000000000000000020.snap.tmp".to_string()]
        );
    }
}
