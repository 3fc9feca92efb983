//! The replicated log as the core sees it: a snapshot boundary, the entries
//! after it, and three watermarks (handed to storage, durable, committed).
//!
//! The whole uncompacted log is kept in memory; storage holds the durable
//! copy. Entries are cheap to clone (their payload is a shared `Bytes`).

use std::collections::VecDeque;

use kv_proto::raft::Entry;

/// The in-memory log of one node. The core owns it: outside this crate it
/// can only be read (`RaftCore::log`); every change goes through the core.
#[derive(Debug, Clone)]
pub struct RaftLog {
    /// Index of the last entry covered by the latest snapshot (0 = none).
    snapshot_index: u64,
    /// Term of the entry at `snapshot_index`.
    snapshot_term: u64,
    /// `entries[i]` has index `snapshot_index + 1 + i`.
    entries: VecDeque<Entry>,
    /// Highest index known to be committed. Never moves back.
    committed: u64,
    /// Highest index handed out to be applied.
    applied: u64,
    /// Highest index known to be durable in this node's storage.
    persisted: u64,
    /// First index not yet handed to storage in a `Ready`.
    unstable_from: u64,
}

impl RaftLog {
    /// A log restored from storage: a snapshot boundary, the durable entries
    /// after it, and the persisted commit index.
    pub(crate) fn restore(
        snapshot_index: u64,
        snapshot_term: u64,
        entries: Vec<Entry>,
        commit: u64,
    ) -> Self {
        for (offset, entry) in entries.iter().enumerate() {
            assert_eq!(
                entry.index,
                snapshot_index + 1 + offset as u64,
                "restored entries must directly follow the snapshot"
            );
        }
        let last = snapshot_index + entries.len() as u64;
        let committed = commit.clamp(snapshot_index, last);
        RaftLog {
            snapshot_index,
            snapshot_term,
            entries: entries.into(),
            committed,
            applied: snapshot_index,
            persisted: last,
            unstable_from: last + 1,
        }
    }

    /// Index of the first entry still held (one past the snapshot).
    pub fn first_index(&self) -> u64 {
        self.snapshot_index + 1
    }

    /// Index of the last entry (the snapshot index when empty).
    pub fn last_index(&self) -> u64 {
        self.snapshot_index + self.entries.len() as u64
    }

    /// Term of the last entry.
    pub fn last_term(&self) -> u64 {
        self.entries.back().map_or(self.snapshot_term, |e| e.term)
    }

    /// Index of the last entry covered by the snapshot.
    pub fn snapshot_index(&self) -> u64 {
        self.snapshot_index
    }

    /// Highest committed index.
    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// Highest index handed out for applying.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Highest index durable in local storage.
    pub fn persisted(&self) -> u64 {
        self.persisted
    }

    /// Term of the entry at `index`, or `None` if compacted away or beyond the end.
    pub fn term(&self, index: u64) -> Option<u64> {
        if index == self.snapshot_index {
            return Some(self.snapshot_term);
        }
        self.entry(index).map(|e| e.term)
    }

    /// The entry at `index`, if held.
    pub fn entry(&self, index: u64) -> Option<&Entry> {
        if index <= self.snapshot_index {
            return None;
        }
        self.entries.get((index - self.snapshot_index - 1) as usize)
    }

    /// §5.4.1: a candidate's log is at least as up-to-date as ours if its
    /// last term is higher, or equal with an index at least as high.
    pub fn is_up_to_date(&self, last_index: u64, last_term: u64) -> bool {
        let our_term = self.last_term();
        last_term > our_term || (last_term == our_term && last_index >= self.last_index())
    }

    /// Clones entries from `from` on, stopping at `max_count` entries or once
    /// `max_bytes` of payload is reached (always at least one entry).
    pub(crate) fn slice(&self, from: u64, max_count: usize, max_bytes: usize) -> Vec<Entry> {
        if from <= self.snapshot_index || from > self.last_index() {
            return Vec::new();
        }
        let start = (from - self.snapshot_index - 1) as usize;
        let mut bytes = 0usize;
        let mut out = Vec::with_capacity(max_count.min(self.entries.len() - start));
        for entry in self.entries.range(start..).take(max_count) {
            bytes += entry.data.len();
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(entry.clone());
        }
        out
    }

    /// Payload bytes of the entries held at indexes `from..=to`.
    pub(crate) fn bytes_between(&self, from: u64, to: u64) -> u64 {
        let from = from.max(self.snapshot_index + 1);
        let to = to.min(self.last_index());
        if from > to {
            return 0;
        }
        let start = (from - self.snapshot_index - 1) as usize;
        let count = (to - from + 1) as usize;
        self.entries
            .range(start..)
            .take(count)
            .map(|e| e.data.len() as u64)
            .sum()
    }

    /// Appends one entry at the end (leader path).
    pub(crate) fn push(&mut self, entry: Entry) {
        assert_eq!(
            entry.index,
            self.last_index() + 1,
            "log append must be contiguous"
        );
        debug_assert!(
            entry.term >= self.last_term(),
            "terms never go back along the log"
        );
        self.entries.push_back(entry);
    }

    /// Appends entries from a leader after the consistency check has passed
    /// at `entries[0].index - 1`: skips the ones we already hold, truncates
    /// our suffix at the first conflict (§5.3), and appends the rest.
    /// Returns the index of the first entry that was truncated, if any.
    pub(crate) fn merge(&mut self, entries: Vec<Entry>) -> Option<u64> {
        let mut truncated_at = None;
        let mut new_from = entries.len();
        for (i, entry) in entries.iter().enumerate() {
            match self.term(entry.index) {
                Some(term) if term == entry.term => continue,
                Some(_) => {
                    // A conflicting entry: drop it and everything after it.
                    assert!(
                        entry.index > self.committed,
                        "a committed entry never conflicts (index {}, committed {})",
                        entry.index,
                        self.committed
                    );
                    self.truncate_from(entry.index);
                    truncated_at = Some(entry.index);
                    new_from = i;
                    break;
                }
                None => {
                    new_from = i;
                    break;
                }
            }
        }
        for entry in entries.into_iter().skip(new_from) {
            self.push(entry);
        }
        truncated_at
    }

    /// Drops `index` and everything after it.
    fn truncate_from(&mut self, index: u64) {
        debug_assert!(index > self.snapshot_index);
        self.entries
            .truncate((index - self.snapshot_index - 1) as usize);
        self.unstable_from = self.unstable_from.min(index);
        self.persisted = self.persisted.min(index - 1);
    }

    /// Moves the commit index forward to `index`. The commit index never moves back.
    pub(crate) fn commit_to(&mut self, index: u64) {
        if index > self.committed {
            assert!(
                index <= self.last_index(),
                "commit index {index} beyond the last index {}",
                self.last_index()
            );
            self.committed = index;
        }
    }

    /// Where a follower's log disagrees with a leader's `prev_log_index`: the
    /// term held there (0 if none) and the first index of that term (or
    /// `last_index + 1` when the log is too short). Used for fast backtracking.
    pub(crate) fn conflict_hint(&self, prev_index: u64) -> (u64, u64) {
        if prev_index > self.last_index() {
            return (self.last_index() + 1, 0);
        }
        let Some(term) = self.term(prev_index) else {
            return (self.first_index(), 0);
        };
        let mut index = prev_index;
        while index > self.first_index() && self.term(index - 1) == Some(term) {
            index -= 1;
        }
        (index, term)
    }

    /// The last index holding an entry of `term`, if we have any (leader side
    /// of fast backtracking).
    pub fn last_index_of_term(&self, term: u64) -> Option<u64> {
        // Terms never decrease along the log: search from the end.
        let mut index = self.last_index();
        while index > self.snapshot_index {
            let t = self.term(index)?;
            if t == term {
                return Some(index);
            }
            if t < term {
                return None;
            }
            index -= 1;
        }
        None
    }

    /// Hands out the entries not yet given to storage.
    pub(crate) fn take_unstable(&mut self) -> Vec<Entry> {
        debug_assert!(
            self.unstable_from > self.snapshot_index,
            "unstable entries never start inside the snapshot"
        );
        let last = self.last_index();
        if self.unstable_from > last {
            return Vec::new();
        }
        let out = self.slice(self.unstable_from, usize::MAX, usize::MAX);
        self.unstable_from = last + 1;
        out
    }

    /// True if some entries wait to be handed to storage.
    pub(crate) fn has_unstable(&self) -> bool {
        self.unstable_from <= self.last_index()
    }

    /// Hands out committed, durable entries not yet applied, up to `max_bytes`
    /// of payload (at least one).
    pub(crate) fn take_committed(&mut self, max_bytes: usize) -> Vec<Entry> {
        let upto = self.committed.min(self.persisted);
        if upto <= self.applied {
            return Vec::new();
        }
        let count = (upto - self.applied) as usize;
        let out = self.slice(self.applied + 1, count, max_bytes);
        self.applied += out.len() as u64;
        out
    }

    /// True if committed, durable entries wait to be applied.
    pub(crate) fn has_committed(&self) -> bool {
        self.committed.min(self.persisted) > self.applied
    }

    /// Storage reports that everything up to `(index, term)` is durable.
    /// Ignored if that entry has since been overwritten (Log Matching makes
    /// the term check enough) or was never handed out.
    pub(crate) fn on_persisted(&mut self, index: u64, term: u64) {
        if index <= self.persisted || index >= self.unstable_from {
            return;
        }
        if self.term(index) == Some(term) {
            self.persisted = index;
        }
    }

    /// Drops entries up to and including `index`, which a local snapshot now
    /// covers. `index` must be applied.
    pub(crate) fn compact(&mut self, index: u64) {
        if index <= self.snapshot_index {
            return;
        }
        assert!(
            index <= self.applied,
            "only applied entries may be compacted"
        );
        let term = self.term(index).expect("applied entries are held");
        let drop = (index - self.snapshot_index) as usize;
        self.entries.drain(..drop);
        self.snapshot_index = index;
        self.snapshot_term = term;
    }

    /// Replaces the whole log with a snapshot received from the leader. The
    /// snapshot is committed by definition; it becomes durable when storage
    /// reports `(index, term)` persisted.
    pub(crate) fn install_snapshot(&mut self, index: u64, term: u64) {
        assert!(
            index > self.committed,
            "a snapshot older than the commit index is never installed"
        );
        self.entries.clear();
        self.snapshot_index = index;
        self.snapshot_term = term;
        self.committed = index;
        self.applied = index;
        self.persisted = self.persisted.min(index - 1);
        // The snapshot goes to storage as `Ready::snapshot`; entries the
        // leader sends after it start right behind it.
        self.unstable_from = index + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: Default::default(),
        }
    }

    fn log_with(terms: &[u64]) -> RaftLog {
        let entries = terms
            .iter()
            .enumerate()
            .map(|(i, t)| entry(i as u64 + 1, *t))
            .collect();
        RaftLog::restore(0, 0, entries, 0)
    }

    fn log_of_three_byte_entries(n: u64) -> RaftLog {
        let entries = (1..=n)
            .map(|index| Entry {
                index,
                term: 1,
                data: bytes::Bytes::from_static(b"abc"),
            })
            .collect();
        RaftLog::restore(0, 0, entries, 0)
    }

    #[test]
    fn a_slice_stops_before_the_entry_that_would_pass_the_byte_limit() {
        let log = log_of_three_byte_entries(5);
        let indexes = |v: Vec<Entry>| v.iter().map(|e| e.index).collect::<Vec<_>>();
        assert_eq!(indexes(log.slice(1, 10, 7)), vec![1, 2], "9 bytes > 7");
        assert_eq!(indexes(log.slice(2, 10, 6)), vec![2, 3], "6 bytes fit 6");
        assert_eq!(indexes(log.slice(4, 10, 1)), vec![4], "one entry at least");
        assert_eq!(indexes(log.slice(1, 2, 100)), vec![1, 2], "the count limit");
    }

    #[test]
    fn bytes_between_counts_only_the_entries_in_the_range() {
        let log = log_of_three_byte_entries(5);
        assert_eq!(log.bytes_between(2, 3), 6);
        assert_eq!(log.bytes_between(5, 9), 3, "capped at the last index");
        assert_eq!(log.bytes_between(4, 3), 0);
    }

    #[test]
    fn the_conflict_hint_at_the_last_index_names_its_term() {
        let log = log_with(&[1, 2, 2]);
        assert_eq!(log.conflict_hint(3), (2, 2), "term 2 starts at index 2");
        assert_eq!(log.conflict_hint(4), (4, 0), "past the end: from the end");
        let compacted = RaftLog::restore(2, 2, vec![entry(3, 2), entry(4, 2)], 0);
        assert_eq!(
            compacted.conflict_hint(4),
            (3, 2),
            "the first index held, not one the snapshot covers"
        );
    }

    #[test]
    fn merge_skips_matching_entries_and_truncates_at_first_conflict() {
        let mut log = log_with(&[1, 1, 2, 2]);
        let truncated = log.merge(vec![entry(2, 1), entry(3, 3), entry(4, 3), entry(5, 3)]);
        assert_eq!(truncated, Some(3));
        assert_eq!(log.last_index(), 5);
        assert_eq!(log.term(3), Some(3));
        assert_eq!(log.term(2), Some(1));
    }

    #[test]
    fn merge_of_an_old_prefix_does_not_truncate_a_longer_log() {
        // A delayed append must not cut entries we already hold (§5.3: "if an
        // existing entry conflicts" — a missing conflict is no reason to truncate).
        let mut log = log_with(&[1, 1, 1, 1]);
        assert_eq!(log.merge(vec![entry(2, 1)]), None);
        assert_eq!(log.last_index(), 4);
    }

    #[test]
    fn conflict_hint_names_first_index_of_the_conflicting_term() {
        let log = log_with(&[1, 2, 2, 2, 3]);
        assert_eq!(log.conflict_hint(4), (2, 2));
        assert_eq!(log.conflict_hint(9), (6, 0));
        assert_eq!(log.last_index_of_term(2), Some(4));
        assert_eq!(log.last_index_of_term(4), None);
    }

    #[test]
    fn persisted_report_for_an_overwritten_entry_is_ignored() {
        let mut log = log_with(&[]);
        log.push(entry(1, 1));
        log.push(entry(2, 1));
        assert_eq!(log.take_unstable().len(), 2);
        log.merge(vec![entry(2, 2)]);
        log.on_persisted(2, 1);
        assert_eq!(log.persisted(), 0, "(2, 1) no longer exists");
        assert_eq!(log.take_unstable().len(), 1);
        log.on_persisted(2, 2);
        assert_eq!(log.persisted(), 2);
    }

    #[test]
    fn committed_entries_are_handed_out_only_once_durable() {
        let mut log = log_with(&[]);
        log.push(entry(1, 1));
        log.push(entry(2, 1));
        log.commit_to(2);
        assert!(log.take_committed(usize::MAX).is_empty());
        let _ = log.take_unstable();
        log.on_persisted(1, 1);
        assert_eq!(log.take_committed(usize::MAX).len(), 1);
        log.on_persisted(2, 1);
        assert_eq!(log.take_committed(usize::MAX)[0].index, 2);
        assert!(!log.has_committed());
    }

    #[test]
    fn entries_appended_right_after_an_installed_snapshot_are_handed_to_storage() {
        // Found by the simulation: a snapshot install and the next append in
        // one batch of inputs lost the entries between them.
        let mut log = log_with(&[1, 1]);
        let _ = log.take_unstable();
        log.install_snapshot(10, 3);
        log.merge(vec![entry(11, 3), entry(12, 3)]);
        let handed: Vec<u64> = log.take_unstable().iter().map(|e| e.index).collect();
        assert_eq!(handed, vec![11, 12]);
        log.on_persisted(12, 3);
        assert_eq!(log.persisted(), 12);
    }

    #[test]
    fn compaction_keeps_terms_at_the_boundary() {
        let mut log = log_with(&[1, 1, 2, 3]);
        log.commit_to(3);
        let _ = log.take_committed(usize::MAX);
        log.compact(3);
        assert_eq!(log.first_index(), 4);
        assert_eq!(log.term(3), Some(2));
        assert_eq!(log.term(2), None);
        assert_eq!(log.conflict_hint(2), (4, 0));
    }

    #[test]
    #[should_panic(expected = "a committed entry never conflicts")]
    fn truncating_a_committed_entry_is_refused() {
        let mut log = log_with(&[1, 1]);
        log.commit_to(2);
        log.merge(vec![entry(2, 5)]);
    }
}
