//! Rebuilds a node's durable Raft state from its snapshot and WAL records,
//! refusing anything that contradicts itself.

use kv_proto::raft::{Entry, HardState};

use super::record::Record;

/// The state recovered from storage.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReplayedLog {
    /// Index and term of the snapshot the log starts after (0, 0: none).
    pub snapshot_index: u64,
    /// Term at `snapshot_index`.
    pub snapshot_term: u64,
    /// Entries after the snapshot, contiguous.
    pub entries: Vec<Entry>,
    /// The last hard state written.
    pub hard_state: HardState,
    /// The term of the entry the WAL still holds at `snapshot_index`, if it
    /// holds one written since the snapshot boundary was set (by the start,
    /// or by a marker at or past it; older markers are ignored) and not cut
    /// away by a later rewrite below it. A
    /// snapshot taken locally agrees with it; one received from a leader
    /// whose install never reached the WAL may not (see `unfinished_install`).
    pub term_at_snapshot: Option<u64>,
    /// A marker for the snapshot the log starts after was replayed: the
    /// WAL witnesses its install.
    pub marked: bool,
}

/// A contradiction in the WAL: acknowledged state cannot be trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct ReplayError {
    /// What contradicts what.
    pub reason: String,
}

impl ReplayedLog {
    /// Starts from a snapshot boundary.
    pub fn new(snapshot_index: u64, snapshot_term: u64) -> Self {
        ReplayedLog {
            snapshot_index,
            snapshot_term,
            ..Default::default()
        }
    }

    /// Index of the last entry.
    pub fn last_index(&self) -> u64 {
        self.snapshot_index + self.entries.len() as u64
    }

    fn last_term(&self) -> u64 {
        self.entries.last().map_or(self.snapshot_term, |e| e.term)
    }

    /// Applies one record in WAL order.
    pub fn apply(&mut self, record: Record) -> Result<(), ReplayError> {
        match record {
            Record::Entry(e) => self.apply_entry(e),
            Record::HardState(h) => {
                if h.term < self.hard_state.term {
                    return Err(ReplayError {
                        reason: format!(
                            "hard state term went back from {} to {}",
                            self.hard_state.term, h.term
                        ),
                    });
                }
                self.hard_state = h;
                Ok(())
            }
            Record::Snapshot(meta) => {
                if meta.index < self.snapshot_index {
                    // An install older than the snapshot we started from.
                    return Ok(());
                }
                self.snapshot_index = meta.index;
                self.snapshot_term = meta.term;
                self.entries.clear();
                self.term_at_snapshot = None;
                self.marked = true;
                Ok(())
            }
        }
    }

    fn apply_entry(&mut self, e: Entry) -> Result<(), ReplayError> {
        if e.index <= self.snapshot_index {
            // Covered by the snapshot (a segment older than it). A rewrite
            // below the snapshot's index cuts away the entry at it.
            self.term_at_snapshot = (e.index == self.snapshot_index).then_some(e.term);
            return Ok(());
        }
        if e.term < self.snapshot_term {
            // Terms never decrease along a log, so this entry cannot follow
            // the snapshot: it is a stale suffix that a snapshot installed
            // from the leader replaced, in a segment older than the install's
            // marker that the crash left behind. (A received snapshot is
            // trusted only with its marker: see `received_name`.)
            return Ok(());
        }
        let next = self.last_index() + 1;
        if e.index > next {
            return Err(ReplayError {
                reason: format!(
                    "entry {} follows entry {} (entries missing)",
                    e.index,
                    next - 1
                ),
            });
        }
        // An entry at an existing index replaces it and everything after.
        self.entries
            .truncate((e.index - self.snapshot_index - 1) as usize);
        if e.term < self.last_term() {
            return Err(ReplayError {
                reason: format!(
                    "entry {} has term {} below the previous entry's {}",
                    e.index,
                    e.term,
                    self.last_term()
                ),
            });
        }
        self.entries.push(e);
        Ok(())
    }

    /// Once every record is applied: a commit index beyond the last entry
    /// is cut back to it. The hard state is written ahead of the entries of
    /// the same batch, so a torn write can leave it ahead of them; a commit
    /// index is only ever learned again, never promised.
    pub fn finish(mut self) -> Self {
        self.hard_state.commit = self.hard_state.commit.min(self.last_index());
        self
    }

    /// The highest term this log mentions (hard state or entries).
    pub fn max_term(&self) -> u64 {
        self.hard_state.term.max(self.last_term())
    }
}

#[cfg(test)]
mod tests {
    use kv_proto::raft::SnapshotMeta;

    use super::*;

    fn e(index: u64, term: u64) -> Record {
        Record::Entry(Entry {
            index,
            term,
            data: Default::default(),
        })
    }

    fn hs(term: u64, commit: u64) -> Record {
        Record::HardState(HardState {
            term,
            vote: 1,
            commit,
            ..Default::default()
        })
    }

    fn replay(records: Vec<Record>) -> Result<ReplayedLog, ReplayError> {
        let mut log = ReplayedLog::new(0, 0);
        for r in records {
            log.apply(r)?;
        }
        Ok(log.finish())
    }

    #[test]
    fn a_rewritten_index_truncates_the_suffix() {
        let log = replay(vec![e(1, 1), e(2, 1), e(3, 1), e(2, 2), hs(2, 1)]).unwrap();
        assert_eq!(log.last_index(), 2);
        assert_eq!(log.entries[1].term, 2);
    }

    #[test]
    fn a_snapshot_marker_restarts_the_log() {
        let log = replay(vec![
            e(1, 1),
            e(2, 1),
            Record::Snapshot(SnapshotMeta { index: 9, term: 3 }),
            e(10, 3),
            hs(3, 10),
        ])
        .unwrap();
        assert_eq!((log.snapshot_index, log.last_index()), (9, 10));
    }

    #[test]
    fn stale_entries_after_an_installed_snapshot_are_dropped() {
        // Entries 51..=52 of term 2 were on disk when a snapshot at (50, 3)
        // was installed; the crash came before their segment was removed.
        let mut log = ReplayedLog::new(50, 3);
        let marker = Record::Snapshot(SnapshotMeta { index: 50, term: 3 });
        for r in [e(50, 2), e(51, 2), e(52, 2), marker, e(51, 3), hs(3, 51)] {
            log.apply(r).unwrap();
        }
        assert_eq!(log.term_at_snapshot, None, "the marker outdates entry 50");
        let log = log.finish();
        assert_eq!(
            log.entries
                .iter()
                .map(|x| (x.index, x.term))
                .collect::<Vec<_>>(),
            vec![(51, 3)]
        );
    }

    #[test]
    fn the_entry_at_the_snapshot_index_is_remembered_until_cut_away_or_marked() {
        let after = |records: Vec<Record>| {
            let mut log = ReplayedLog::new(5, 2);
            for r in records {
                log.apply(r).unwrap();
            }
            log.term_at_snapshot
        };
        assert_eq!(after(vec![e(4, 1), e(5, 1)]), Some(1));
        assert_eq!(
            after(vec![e(5, 1), e(5, 2)]),
            Some(2),
            "the last write counts"
        );
        assert_eq!(
            after(vec![e(5, 1), e(4, 2)]),
            None,
            "a rewrite below cuts it"
        );
        assert_eq!(
            after(vec![e(5, 1), e(6, 2)]),
            Some(1),
            "entries after keep it"
        );
        let marker = Record::Snapshot(SnapshotMeta { index: 5, term: 2 });
        assert_eq!(after(vec![e(5, 1), marker]), None);
        assert_eq!(after(vec![]), None);
    }

    #[test]
    fn contradictions_are_refused_with_a_reason() {
        assert!(replay(vec![e(1, 1), e(3, 1), hs(1, 0)])
            .unwrap_err()
            .reason
            .contains("missing"));
        assert!(replay(vec![e(1, 2), e(2, 1), hs(2, 0)])
            .unwrap_err()
            .reason
            .contains("below"));
        assert_eq!(
            replay(vec![hs(1, 5), e(1, 1)]).unwrap().hard_state.commit,
            1,
            "a commit index ahead of a torn batch's entries is cut back"
        );
        assert!(replay(vec![hs(3, 0), hs(2, 0)])
            .unwrap_err()
            .reason
            .contains("went back"));
        // Entries newer than the hard state (torn between them) are fine.
        assert!(replay(vec![e(1, 4), hs(3, 0)]).is_ok());
    }
}
