//! What a leader knows about one follower's log, and how much it may send.

use std::collections::VecDeque;

use super::ready::SnapshotInfo;

/// How the leader is currently replicating to a follower.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationState {
    /// Finding where the logs agree: one append per heartbeat or response.
    Probe,
    /// Logs agree up to `match_index`: appends are pipelined, bounded by the
    /// in-flight window.
    Replicate,
    /// The follower needs compacted entries: a snapshot is being sent in chunks.
    Snapshot,
}

/// A snapshot being sent to one follower, chunk by chunk.
#[derive(Debug, Clone)]
pub struct SnapshotTransfer {
    /// The snapshot (its data stays on disk; chunks are read as they go).
    pub info: SnapshotInfo,
    /// The offset of the chunk to send next.
    pub offset: u64,
    /// Heartbeat intervals since the follower last answered.
    pub idle_heartbeats: u32,
    /// Idle heartbeat intervals after which the chunk is resent (a lost
    /// chunk); doubles with each resend that brings no answer, so a slow
    /// disk on either side is not buried under requests for the same chunk.
    pub resend_after: u32,
}

/// Idle heartbeat intervals before a snapshot chunk is first resent.
pub const SNAPSHOT_CHUNK_RESEND_MIN: u32 = 2;
/// The longest wait between resends of one snapshot chunk, in heartbeat
/// intervals.
pub const SNAPSHOT_CHUNK_RESEND_MAX: u32 = 64;

/// The leader's view of one follower.
#[derive(Debug, Clone)]
pub struct Progress {
    /// Highest index known to be replicated (durably) on the follower.
    pub match_index: u64,
    /// Next index to send.
    pub next_index: u64,
    /// Current replication mode.
    pub state: ReplicationState,
    /// In `Probe`: an append is outstanding; wait for its answer or a heartbeat.
    pub probe_sent: bool,
    /// In `Replicate`: the last index and payload bytes of each append in flight.
    pub inflight: VecDeque<(u64, u64)>,
    /// Payload bytes of the appends in flight.
    pub inflight_bytes: u64,
    /// Heartbeats since `match_index` last moved while appends were in flight.
    pub stalled_heartbeats: u32,
    /// In `Snapshot`: the transfer in progress.
    pub transfer: Option<SnapshotTransfer>,
    /// The follower answered since the last quorum check.
    pub recent_active: bool,
    /// The leader's tick when the follower last answered as a voter (0:
    /// not in this term).
    pub heard_at: u64,
    /// The leader's tick when the follower last answered at all, recovering
    /// or not (0: not in this term): whether it still catches up.
    pub answered_at: u64,
    /// Highest read round the follower has acknowledged in this term.
    pub acked_round: u64,
    /// The follower says its storage is recovering: it counts toward no
    /// quorum until it says otherwise.
    pub recovering: bool,
}

impl Progress {
    /// A fresh view at the start of a term: probe from the leader's last index.
    pub fn new(next_index: u64) -> Self {
        Progress {
            match_index: 0,
            next_index,
            state: ReplicationState::Probe,
            probe_sent: false,
            inflight: VecDeque::new(),
            inflight_bytes: 0,
            stalled_heartbeats: 0,
            transfer: None,
            recent_active: false,
            heard_at: 0,
            answered_at: 0,
            acked_round: 0,
            recovering: false,
        }
    }

    /// The follower lost state it had acknowledged: forget its match and
    /// find where its log now ends, probing back from `next_index`.
    pub fn mark_recovering(&mut self, next_index: u64) {
        self.recovering = true;
        self.match_index = 0;
        self.acked_round = 0;
        self.recent_active = false;
        self.become_probe(next_index);
        debug_assert_eq!(self.match_index, 0, "nothing is known to match");
    }

    /// The match index as quorums may count it: nothing while recovering.
    pub fn counted_match(&self) -> u64 {
        if self.recovering {
            0
        } else {
            self.match_index
        }
    }

    /// Whether another append may go now: in `Replicate`, while fewer than
    /// `max_inflight` appends and fewer than `max_bytes` payload bytes are
    /// in flight.
    pub fn can_send(&self, max_inflight: usize, max_bytes: u64) -> bool {
        debug_assert!(
            self.inflight.len() <= max_inflight,
            "the window never holds more than it allows"
        );
        debug_assert!(
            self.state == ReplicationState::Replicate || self.inflight.is_empty(),
            "only pipelined replication has appends in flight"
        );
        match self.state {
            ReplicationState::Probe => !self.probe_sent,
            ReplicationState::Replicate => {
                self.inflight.len() < max_inflight && self.inflight_bytes < max_bytes
            }
            ReplicationState::Snapshot => false,
        }
    }

    /// Records that an append ending at `last_index`, carrying `bytes` of
    /// payload, was sent.
    pub fn on_append_sent(&mut self, last_index: u64, bytes: u64, had_entries: bool) {
        match self.state {
            ReplicationState::Probe => self.probe_sent = true,
            ReplicationState::Replicate if had_entries => {
                debug_assert!(last_index >= self.next_index, "appends go forward");
                self.next_index = last_index + 1;
                debug_assert!(
                    self.inflight
                        .back()
                        .is_none_or(|&(last, _)| last < last_index),
                    "appends in flight end at increasing indexes"
                );
                self.inflight.push_back((last_index, bytes));
                self.inflight_bytes += bytes;
            }
            _ => {}
        }
    }

    /// The follower holds everything up to `index`. Returns true if that is news.
    pub fn on_match(&mut self, index: u64) -> bool {
        let advanced = index > self.match_index;
        if advanced {
            self.match_index = index;
            self.stalled_heartbeats = 0;
        }
        self.next_index = self.next_index.max(index + 1);
        while let Some(&(last, bytes)) = self.inflight.front() {
            if last > index {
                break;
            }
            self.inflight.pop_front();
            self.inflight_bytes -= bytes;
        }
        debug_assert!(
            self.next_index > self.match_index,
            "next index lies past the match"
        );
        debug_assert_eq!(
            self.inflight_bytes,
            self.inflight.iter().map(|&(_, b)| b).sum::<u64>(),
            "the window's byte count matches what is in it"
        );
        // A heartbeat at an old match index does not answer the probe.
        if self.state == ReplicationState::Probe && index + 1 >= self.next_index {
            self.become_replicate();
        }
        advanced
    }

    /// Switches to pipelined replication right after the match index.
    pub fn become_replicate(&mut self) {
        self.state = ReplicationState::Replicate;
        self.probe_sent = false;
        self.next_index = self.next_index.max(self.match_index + 1);
        self.transfer = None;
        debug_assert!(
            self.next_index > self.match_index,
            "next lies past the match"
        );
    }

    /// Switches to probing from `next_index` (never at or below the match).
    pub fn become_probe(&mut self, next_index: u64) {
        self.state = ReplicationState::Probe;
        self.probe_sent = false;
        self.inflight.clear();
        self.inflight_bytes = 0;
        self.stalled_heartbeats = 0;
        self.transfer = None;
        self.next_index = next_index.max(self.match_index + 1);
        debug_assert!(self.inflight.is_empty(), "a probe has nothing in flight");
        debug_assert!(
            self.next_index > self.match_index,
            "next lies past the match"
        );
    }

    /// Starts sending `snapshot` from its first byte.
    pub fn become_snapshot(&mut self, info: SnapshotInfo) {
        debug_assert!(
            info.meta.index >= self.match_index,
            "a snapshot goes only to a follower that lacks what it covers"
        );
        self.state = ReplicationState::Snapshot;
        self.probe_sent = false;
        self.inflight.clear();
        self.inflight_bytes = 0;
        self.transfer = Some(SnapshotTransfer {
            info,
            offset: 0,
            idle_heartbeats: 0,
            resend_after: SNAPSHOT_CHUNK_RESEND_MIN,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicate_window_bounds_inflight_appends() {
        let mut p = Progress::new(1);
        p.on_match(0);
        assert_eq!(p.state, ReplicationState::Replicate);
        for last in 1..=3 {
            assert!(p.can_send(3, u64::MAX));
            p.on_append_sent(last, 10, true);
        }
        assert!(!p.can_send(3, u64::MAX));
        p.on_match(2);
        assert_eq!(p.inflight.len(), 1);
        assert_eq!(p.inflight_bytes, 10);
        assert!(p.can_send(3, u64::MAX));
        assert_eq!(p.next_index, 4);
    }

    #[test]
    fn replicate_window_bounds_bytes_in_flight() {
        let mut p = Progress::new(1);
        p.on_match(0);
        p.on_append_sent(1, 600, true);
        assert!(p.can_send(64, 1000), "600 of 1000 bytes in flight");
        p.on_append_sent(2, 600, true);
        assert!(!p.can_send(64, 1000), "1200 bytes: wait for an answer");
        p.on_match(1);
        assert_eq!(p.inflight_bytes, 600);
        assert!(p.can_send(64, 1000));
    }

    #[test]
    fn probe_never_goes_below_the_match() {
        let mut p = Progress::new(10);
        p.on_match(5);
        p.become_probe(2);
        assert_eq!(p.next_index, 6);
        assert!(p.can_send(1, u64::MAX));
        p.on_append_sent(9, 1, true);
        assert!(!p.can_send(1, u64::MAX));
    }
}
