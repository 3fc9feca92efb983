//! Group commit, pure: several Readies' writes merged into one append, and
//! the rule for when that append needs an fsync. The runtime's storage task
//! and the in-memory test network both write through this, so the core's
//! tests exercise the same merging and the same skipped fsyncs.

use kv_proto::raft::{Entry, HardState};

/// Entries and hard state of several Readies merged into one write, with
/// what each Ready is to report once the write is done (in Ready order).
#[derive(Debug)]
pub struct WriteBatch<T> {
    /// The latest hard state of the merged Readies.
    pub hard_state: Option<HardState>,
    /// Their entries, a later Ready's replacing an earlier one's from its
    /// first index on.
    pub entries: Vec<Entry>,
    /// One completion per merged Ready.
    pub done: Vec<T>,
}

impl<T> Default for WriteBatch<T> {
    fn default() -> Self {
        WriteBatch {
            hard_state: None,
            entries: Vec::new(),
            done: Vec::new(),
        }
    }
}

impl<T> WriteBatch<T> {
    /// Adds a Ready's writes; a later Ready's entries replace the batch's
    /// entries from their first index on (a truncation inside the batch).
    pub fn merge(&mut self, hard_state: Option<HardState>, entries: Vec<Entry>, done: T) {
        if let Some(first) = entries.first() {
            let keep = self
                .entries
                .iter()
                .take_while(|e| e.index < first.index)
                .count();
            self.entries.truncate(keep);
            // Only the join is checked: the core hands out contiguous
            // entries, and a batch may hold thousands.
            debug_assert!(
                self.entries
                    .last()
                    .is_none_or(|e| e.index + 1 == first.index),
                "a Ready's entries follow on from the batch's"
            );
        }
        self.entries.extend(entries);
        if hard_state.is_some() {
            self.hard_state = hard_state;
        }
        self.done.push(done);
    }

    /// True if no Ready was merged.
    pub fn is_empty(&self) -> bool {
        self.done.is_empty()
    }
}

/// Decides which writes need an fsync. Entries, and anything in the hard
/// state but its commit index, must be durable before anything that
/// depends on them leaves. A commit index alone need not be: a crash that
/// loses it only makes the node relearn it from the leader. Skipping those
/// fsyncs halves the disk work of a lone client's write.
#[derive(Debug, Default)]
pub struct SyncRule {
    /// The hard state as of the last fsync, but its commit index (None: no
    /// fsync yet in this life, so the first hard state is always synced).
    synced: Option<HardState>,
}

impl SyncRule {
    /// Whether `batch` must be fsynced before its completions are reported;
    /// if so, remembers its hard state as synced.
    pub fn must_sync<T>(&mut self, batch: &WriteBatch<T>) -> bool {
        let without_commit = |h: HardState| HardState { commit: 0, ..h };
        let must = !batch.entries.is_empty()
            || batch
                .hard_state
                .is_some_and(|h| Some(without_commit(h)) != self.synced);
        if must {
            if let Some(h) = batch.hard_state {
                self.synced = Some(without_commit(h));
            }
        }
        must
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn e(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: Bytes::from_static(b"x"),
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

    #[test]
    fn a_later_readys_entries_replace_the_batch_from_their_first_index() {
        let mut b = WriteBatch::default();
        b.merge(Some(hs(1, 1, 0)), vec![e(1, 1), e(2, 1), e(3, 1)], "a");
        b.merge(Some(hs(2, 2, 1)), vec![e(2, 2)], "b");
        let got: Vec<_> = b.entries.iter().map(|e| (e.index, e.term)).collect();
        assert_eq!(got, vec![(1, 1), (2, 2)]);
        assert_eq!(b.hard_state, Some(hs(2, 2, 1)), "the latest hard state");
        assert_eq!(b.done, vec!["a", "b"], "completions in Ready order");
        assert!(!b.is_empty() && WriteBatch::<()>::default().is_empty());
    }

    #[test]
    fn only_a_change_beyond_the_commit_index_needs_an_fsync() {
        let mut rule = SyncRule::default();
        let batch = |hard, entries| {
            let mut b = WriteBatch::default();
            b.merge(hard, entries, ());
            b
        };
        assert!(
            rule.must_sync(&batch(Some(hs(1, 1, 0)), vec![])),
            "the first"
        );
        assert!(
            !rule.must_sync(&batch(Some(hs(1, 1, 5)), vec![])),
            "commit only"
        );
        assert!(rule.must_sync(&batch(None, vec![e(6, 1)])), "entries");
        assert!(
            rule.must_sync(&batch(Some(hs(2, 0, 5)), vec![])),
            "a new term"
        );
        assert!(!rule.must_sync(&batch(None, vec![])), "nothing at all");
    }
}
