//! Log compaction on the leader (thesis §5.1): once a snapshot is durable
//! the log before it may go, but a follower behind it would then need the
//! snapshot, and under steady writes a follower whose transfer or catch-up
//! is slower than the snapshots would start over with the newest one for
//! ever. So the log keeps what a follower still needs, within a budget:
//!
//! - the entries after a snapshot a follower is being sent, so that once
//!   it has installed it, it goes on by appends (however slowly its disk
//!   answers: a transfer lasts until it ends or the leader changes);
//! - the entries after the match of any other follower that answered
//!   within `LIVE_ELECTION_TIMEOUTS` election timeouts, one being repaired
//!   after losing its disk included (one that is down soon holds nothing
//!   back).
//!
//! Each need is met while the entries after it weigh at most
//! `Config::max_log_kept_for_transfer_bytes` (payload plus a fixed cost per
//! entry); the oldest need met sets where the log starts. Whatever is
//! met, the log keeps one snapshot interval for a transfer under way, as
//! it did before the needs were counted.

use super::core::RaftCore;
use super::progress::Progress;
use super::ready::SnapshotInfo;

/// A follower that answered within this many election timeouts counts as
/// live: one catching up on a machine busy with the very writes it catches
/// up with may answer late, and being compacted past costs it a whole
/// snapshot. One that is down holds the log back only this long, and never
/// beyond the budget.
const LIVE_ELECTION_TIMEOUTS: u64 = 20;

/// What an entry held in memory costs beyond its payload (its struct and
/// its slot in the log's queue), counted against the budget.
const ENTRY_OVERHEAD_BYTES: u64 = 64;

impl RaftCore {
    /// The driver saved a snapshot (covering applied entries) durably:
    /// drops the log before it, but for what followers still need (see the
    /// module doc). The driver keeps the files of
    /// [`RaftCore::snapshots_being_sent`] too.
    pub fn compact(&mut self, snapshot: SnapshotInfo) {
        let meta = snapshot.meta;
        let previous = self.snapshot.map_or(0, |s| s.meta.index);
        if meta.index <= previous {
            return;
        }
        assert!(
            meta.index <= self.log.applied(),
            "a snapshot covers only applied entries"
        );
        assert_eq!(
            self.log.term(meta.index),
            Some(meta.term),
            "snapshot term matches the log"
        );
        // One interval is kept for a transfer under way in any case.
        let for_transfer = meta.index.min(previous.max(self.oldest_transfer()));
        let keep_after = self
            .oldest_need_met(meta.index)
            .map_or(for_transfer, |need| need.min(for_transfer));
        self.log.compact(keep_after);
        self.snapshot = Some(snapshot);
    }

    /// The snapshots being sent to followers that the log can still carry
    /// on from once they are installed (leader only): their files must stay.
    pub fn snapshots_being_sent(&self) -> Vec<u64> {
        let mut indexes: Vec<u64> = self
            .progress
            .values()
            .filter_map(|p| p.transfer.as_ref())
            .map(|t| t.info.meta.index)
            .filter(|&index| index >= self.log.snapshot_index())
            .collect();
        indexes.sort_unstable();
        indexes.dedup();
        indexes
    }

    /// The oldest index after which a follower needs the log, among the
    /// needs the log still holds and the budget allows, for a snapshot at
    /// `snapshot_index`.
    fn oldest_need_met(&self, snapshot_index: u64) -> Option<u64> {
        let live_ticks = self
            .cfg
            .election_ticks
            .saturating_mul(LIVE_ELECTION_TIMEOUTS);
        // A follower being repaired (recovering) catches up too.
        let live = |p: &Progress| {
            p.answered_at > 0 && self.ticks.saturating_sub(p.answered_at) <= live_ticks
        };
        let weight = |from: u64| {
            let entries = snapshot_index - from;
            self.log.bytes_between(from + 1, snapshot_index) + entries * ENTRY_OVERHEAD_BYTES
        };
        self.progress
            .values()
            .filter_map(|p| match &p.transfer {
                Some(t) => Some(t.info.meta.index),
                None if live(p) => Some(p.match_index),
                None => None,
            })
            .filter(|&need| (self.log.snapshot_index()..snapshot_index).contains(&need))
            .filter(|&need| weight(need) <= self.cfg.max_log_kept_for_transfer_bytes)
            .min()
    }

    /// The oldest snapshot being sent to a follower (`u64::MAX` for none).
    fn oldest_transfer(&self) -> u64 {
        self.progress
            .values()
            .filter_map(|p| p.transfer.as_ref())
            .map(|t| t.info.meta.index)
            .min()
            .unwrap_or(u64::MAX)
    }
}
