//! The leader's side of log replication (§5.3), the commit rule (§5.4.2,
//! Figure 8), heartbeats, the quorum check, and snapshot transfer (§7).

use kv_proto::raft::{
    message::Body, AppendEntries, AppendEntriesResponse, InstallSnapshotResponse,
};

use super::config::ReadMode;
use super::core::RaftCore;
use super::progress::{
    Progress, ReplicationState, SNAPSHOT_CHUNK_RESEND_MAX, SNAPSHOT_CHUNK_RESEND_MIN,
};
use super::quorum::{committed_index, majority};
use super::ready::{Role, SnapshotChunkOut};
use super::validate::Refusal;

/// After this many heartbeats without progress while appends are in flight,
/// the leader asks whether the follower has them (an empty append at the
/// end of what was sent): a follower that lost some rejects it, and only
/// that rejection drops replication back to probing. One whose disk is
/// slow accepts it once its write is durable, and keeps its pipeline.
const STALLED_HEARTBEATS_CHECK: u32 = 2;

impl RaftCore {
    pub(super) fn tick_leader(&mut self) {
        if self.election_elapsed >= self.cfg.election_ticks {
            self.election_elapsed = 0;
            if self.cfg.check_quorum && !self.quorum_active() {
                tracing::warn!(
                    node = self.cfg.id,
                    term = self.term,
                    "lost contact with a quorum"
                );
                self.become_follower(self.term, None);
                return;
            }
        }
        self.heartbeat_elapsed += 1;
        if self.heartbeat_elapsed >= self.cfg.heartbeat_ticks {
            self.heartbeat_elapsed = 0;
            self.on_heartbeat_timeout();
        }
    }

    /// Thesis §6.2: did a majority answer during the last election timeout?
    /// Resets the activity marks for the next period.
    fn quorum_active(&mut self) -> bool {
        let mut active = 1; // the leader itself
        for p in self.progress.values_mut() {
            if p.recent_active && !p.recovering {
                active += 1;
            }
            p.recent_active = false;
        }
        active >= majority(self.cfg.voters.len())
    }

    /// Heartbeat interval: keep followers' timers quiet, retry probes, and
    /// resend what looks lost.
    fn on_heartbeat_timeout(&mut self) {
        // For lease reads every heartbeat is a dated round: its answers
        // renew the lease.
        let round = match self.cfg.read_mode {
            ReadMode::Lease => self.start_round(),
            ReadMode::Index => self.reads.current_round(),
        };
        for peer in self.peers.clone() {
            let Some(p) = self.progress.get_mut(&peer) else {
                continue;
            };
            let mut check = false;
            match p.state {
                ReplicationState::Probe => p.probe_sent = false,
                ReplicationState::Replicate if !p.inflight.is_empty() => {
                    p.stalled_heartbeats += 1;
                    if p.stalled_heartbeats >= STALLED_HEARTBEATS_CHECK {
                        p.stalled_heartbeats = 0;
                        check = true;
                    }
                }
                ReplicationState::Replicate => {}
                ReplicationState::Snapshot => {
                    if let Some(t) = p.transfer.as_mut() {
                        t.idle_heartbeats += 1;
                        if t.idle_heartbeats >= t.resend_after {
                            t.idle_heartbeats = 0;
                            t.resend_after = (t.resend_after * 2).min(SNAPSHOT_CHUNK_RESEND_MAX);
                            self.send_snapshot_chunk(peer);
                        }
                    }
                }
            }
            self.send_heartbeat(peer, round);
            if check {
                self.send_check_append(peer, round);
            }
            self.send_appends(peer);
        }
    }

    /// An empty append at the follower's match index: it always passes the
    /// consistency check, carries the commit index and the read round.
    fn send_heartbeat(&mut self, peer: u64, round: u64) {
        let Some(p) = self.progress.get(&peer) else {
            return;
        };
        let (prev_log_index, prev_log_term) = match self.log.term(p.match_index) {
            Some(term) => (p.match_index, term),
            // The match point was compacted away: index 0 always matches.
            None => (0, 0),
        };
        let ae = AppendEntries {
            prev_log_index,
            prev_log_term,
            entries: Vec::new(),
            leader_commit: self.log.committed().min(prev_log_index),
            round,
        };
        self.send(peer, Body::AppendEntries(ae));
    }

    /// An empty append at the end of what was sent to `peer`: accepted once
    /// the follower holds it all durably, rejected if it lost some. If those
    /// entries were compacted meanwhile, the follower may need a snapshot:
    /// probe from its match (which leads there).
    fn send_check_append(&mut self, peer: u64, round: u64) {
        let Some(p) = self.progress.get_mut(&peer) else {
            return;
        };
        let prev_log_index = p.next_index - 1;
        let Some(prev_log_term) = self.log.term(prev_log_index) else {
            let next = p.match_index + 1;
            p.become_probe(next);
            return;
        };
        let ae = AppendEntries {
            prev_log_index,
            prev_log_term,
            entries: Vec::new(),
            leader_commit: self.log.committed().min(prev_log_index),
            round,
        };
        self.send(peer, Body::AppendEntries(ae));
    }

    /// Sends a heartbeat carrying `round` to every follower (ReadIndex).
    pub(super) fn broadcast_heartbeat(&mut self, round: u64) {
        for peer in self.peers.clone() {
            self.send_heartbeat(peer, round);
        }
    }

    /// Sends new entries to every follower that may receive them.
    pub(super) fn broadcast_append(&mut self) {
        for peer in self.peers.clone() {
            self.send_appends(peer);
        }
    }

    /// Sends as many appends to `peer` as its window allows.
    fn send_appends(&mut self, peer: u64) {
        while self.send_append(peer) {}
    }

    /// Sends one append to `peer` if allowed and useful. Returns true if
    /// another one might follow.
    fn send_append(&mut self, peer: u64) -> bool {
        let Some(p) = self.progress.get(&peer) else {
            return false;
        };
        if !p.can_send(self.cfg.max_inflight_appends, self.cfg.max_inflight_bytes) {
            return false;
        }
        let prev_log_index = p.next_index - 1;
        let Some(prev_log_term) = self.log.term(prev_log_index) else {
            // §7: the entries this follower needs were compacted.
            self.start_snapshot_transfer(peer);
            return false;
        };
        let entries = self.log.slice(
            p.next_index,
            self.cfg.max_append_entries,
            self.cfg.max_append_bytes,
        );
        if entries.is_empty() && p.state == ReplicationState::Replicate {
            return false;
        }
        let last = prev_log_index + entries.len() as u64;
        let had_entries = !entries.is_empty();
        let bytes = entries.iter().map(|e| e.data.len() as u64).sum();
        let ae = AppendEntries {
            prev_log_index,
            prev_log_term,
            entries,
            leader_commit: self.log.committed(),
            round: self.reads.current_round(),
        };
        if let Some(p) = self.progress.get_mut(&peer) {
            p.on_append_sent(last, bytes, had_entries);
        }
        self.send(peer, Body::AppendEntries(ae));
        had_entries
    }

    /// The progress of a follower that answered in our term, marked active
    /// (check-quorum) and credited with the read round it echoed (ReadIndex)
    /// unless it says it is recovering; the first time it says so, what we
    /// knew of its log is forgotten.
    fn responder(
        &mut self,
        from: u64,
        round: u64,
        recovering: bool,
        lacks_match: bool,
    ) -> Option<&mut Progress> {
        if self.role != Role::Leader {
            return None;
        }
        let next = self.log.last_index() + 1;
        let now = self.ticks;
        let p = self.progress.get_mut(&from)?;
        // A recovering follower may lose its state again: then it lacks an
        // entry it acknowledged, which a healthy one never does.
        let lost_again = p.recovering && lacks_match && p.match_index > 0;
        if recovering && (!p.recovering || lost_again) {
            tracing::info!(
                node = self.cfg.id,
                term = self.term,
                peer = from,
                "follower is recovering: not counting it until it is repaired"
            );
            p.mark_recovering(next);
        }
        p.recovering = recovering;
        p.answered_at = now;
        if !recovering {
            p.recent_active = true;
            p.heard_at = now;
            p.acked_round = p.acked_round.max(round);
        }
        Some(p)
    }

    /// A follower answered an append in our term.
    pub(super) fn handle_append_response(&mut self, from: u64, r: AppendEntriesResponse) {
        if r.success && r.match_index > self.log.last_index() && self.role == Role::Leader {
            return self.refuse(from, Refusal::MatchBeyondLog);
        }
        let lacks_match = !r.success && r.rejected_index <= self.match_of(from);
        let Some(p) = self.responder(from, r.round, r.recovering, lacks_match) else {
            return;
        };
        if r.success {
            let advanced = p.on_match(r.match_index);
            if p.state == ReplicationState::Snapshot
                && p.transfer
                    .as_ref()
                    .is_some_and(|t| p.match_index >= t.info.meta.index)
            {
                p.become_replicate();
            }
            if advanced {
                self.maybe_commit();
                self.maybe_send_timeout_now();
            }
        } else if !self.on_append_rejected(from, &r) {
            self.confirm_reads();
            return;
        }
        self.send_appends(from);
        self.confirm_reads();
    }

    fn match_of(&self, peer: u64) -> u64 {
        self.progress.get(&peer).map_or(0, |p| p.match_index)
    }

    /// §5.3: "If AppendEntries fails because of log inconsistency: decrement
    /// nextIndex and retry", using the follower's conflict hint to skip a
    /// whole term at a time. Returns false for a stale rejection.
    fn on_append_rejected(&mut self, from: u64, r: &AppendEntriesResponse) -> bool {
        let Some(p) = self.progress.get(&from) else {
            return false;
        };
        let stale = match p.state {
            ReplicationState::Snapshot => true,
            // Only the answer to the outstanding probe counts.
            ReplicationState::Probe => r.rejected_index != p.next_index - 1,
            // Below the match index the follower already agreed with us.
            ReplicationState::Replicate => r.rejected_index < p.match_index,
        };
        if stale {
            return false;
        }
        let mut next = r.conflict_index;
        if r.conflict_term > 0 {
            if let Some(last) = self.log.last_index_of_term(r.conflict_term) {
                next = last + 1;
            }
        }
        let next = next.min(r.rejected_index).max(1);
        debug_assert!(
            next <= r.rejected_index.max(1),
            "a rejection never moves the probe forward"
        );
        tracing::debug!(
            node = self.cfg.id,
            term = self.term,
            peer = from,
            rejected = r.rejected_index,
            next,
            "append rejected"
        );
        if let Some(p) = self.progress.get_mut(&from) {
            p.become_probe(next);
        }
        true
    }

    /// §5.3, §5.4.2: the commit index is the highest index stored on a
    /// majority, but only if that entry is of the current term; entries of
    /// earlier terms are committed indirectly (Figure 8).
    pub(super) fn maybe_commit(&mut self) {
        self.match_scratch.clear();
        self.match_scratch.push(self.log.persisted());
        self.match_scratch
            .extend(self.progress.values().map(Progress::counted_match));
        let index = committed_index(&mut self.match_scratch);
        if index <= self.log.committed() || self.log.term(index) != Some(self.term) {
            return;
        }
        debug_assert_eq!(self.role, Role::Leader, "only a leader counts replicas");
        debug_assert!(
            index <= self.log.last_index(),
            "a majority cannot hold more than the leader's log"
        );
        let first_in_term = self.log.term(self.log.committed()) != Some(self.term);
        let newly = self.log.bytes_between(self.log.committed() + 1, index);
        self.uncommitted_bytes = self.uncommitted_bytes.saturating_sub(newly);
        let before = self.log.committed();
        self.log.commit_to(index);
        assert!(self.log.committed() > before, "the commit index only grows");
        if first_in_term {
            self.reads.on_term_commit(index);
            if self.peers.is_empty() {
                self.reads.confirm_up_to(u64::MAX);
            }
        }
    }

    /// Confirms the reads whose round a majority has acknowledged.
    fn confirm_reads(&mut self) {
        self.match_scratch.clear();
        self.match_scratch.push(u64::MAX); // the leader acknowledges every round
        self.match_scratch.extend(self.progress.values().map(|p| {
            if p.recovering {
                0
            } else {
                p.acked_round
            }
        }));
        let round = committed_index(&mut self.match_scratch);
        self.reads.confirm_up_to(round);
        if self.cfg.read_mode == ReadMode::Lease {
            self.lease.acknowledged(round, self.cfg.lease_ticks());
        }
    }

    fn start_snapshot_transfer(&mut self, peer: u64) {
        let Some(info) = self.snapshot else {
            // Unreachable by construction: entries are compacted only after a
            // snapshot covering them was handed to `compact`.
            tracing::error!(
                node = self.cfg.id,
                term = self.term,
                peer,
                "log compacted without a snapshot"
            );
            return;
        };
        if let Some(p) = self.progress.get_mut(&peer) {
            tracing::info!(
                node = self.cfg.id,
                term = self.term,
                peer,
                index = info.meta.index,
                bytes = info.size,
                "sending snapshot"
            );
            p.become_snapshot(info);
        }
        self.send_snapshot_chunk(peer);
    }

    /// Asks the runtime to send the chunk at the transfer's current offset.
    pub(super) fn send_snapshot_chunk(&mut self, peer: u64) {
        let Some(t) = self.progress.get(&peer).and_then(|p| p.transfer.as_ref()) else {
            return;
        };
        let size = t.info.size;
        let offset = t.offset.min(size);
        let len = (size - offset).min(self.cfg.snapshot_chunk_bytes as u64);
        let chunk = SnapshotChunkOut {
            to: peer,
            from: self.cfg.id,
            term: self.term,
            meta: t.info.meta,
            offset,
            len,
            done: offset + len == size,
            round: self.reads.current_round(),
        };
        self.snapshot_chunks_out.push(chunk);
    }

    /// A follower answered a snapshot chunk.
    pub(super) fn handle_snapshot_response(&mut self, from: u64, r: InstallSnapshotResponse) {
        let Some(p) = self.responder(from, r.round, r.recovering, false) else {
            return;
        };
        let current = p.transfer.as_ref().map(|t| t.info.meta);
        if p.state != ReplicationState::Snapshot || current != r.meta {
            self.confirm_reads();
            return;
        }
        if r.done {
            let index = r.meta.map_or(0, |m| m.index);
            p.on_match(index);
            p.become_replicate();
            self.maybe_commit();
            self.send_appends(from);
        } else if let Some(t) = p.transfer.as_mut() {
            // Only an answer about the chunk just sent moves the transfer.
            if r.next_offset > t.offset || r.reject {
                t.offset = r.next_offset;
                t.idle_heartbeats = 0;
                t.resend_after = SNAPSHOT_CHUNK_RESEND_MIN;
                self.send_snapshot_chunk(from);
            }
        }
        self.confirm_reads();
    }

    /// Reading the snapshot to send to `peer` failed (a newer one replaced
    /// it on disk): start over with the current one.
    pub fn snapshot_send_failed(&mut self, peer: u64) {
        if let Some(p) = self.progress.get_mut(&peer) {
            if p.state == ReplicationState::Snapshot {
                let next = p.match_index + 1;
                p.become_probe(next);
            }
        }
    }
}
