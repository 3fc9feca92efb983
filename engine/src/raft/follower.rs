//! The follower's side of replication: AppendEntries (§5.3, Figure 2
//! "Receiver implementation") and InstallSnapshot (§7, Figure 13).

use kv_proto::raft::{
    message::Body, AppendEntries, AppendEntriesResponse, InstallSnapshot, InstallSnapshotResponse,
};

use super::core::{IncomingSnapshot, RaftCore};
use super::ready::{Role, SnapshotChunkIn, SnapshotInfo};
use super::validate::Refusal;

impl RaftCore {
    /// The leader of our term is alive: follow it and restart the timer.
    /// Returns false (and refuses the message) if this node leads the term
    /// itself: no correct peer claims a term that already has a leader.
    #[must_use]
    fn heard_from_leader(&mut self, leader: u64) -> bool {
        if self.role == Role::Leader {
            self.refuse(leader, Refusal::SecondLeader);
            return false;
        }
        if self.role != Role::Follower {
            // A candidate that sees a leader of its own term steps down (§5.2).
            self.become_follower(self.term, Some(leader));
        }
        self.leader = Some(leader);
        self.election_elapsed = 0;
        true
    }

    /// Figure 2, AppendEntries receiver: reply false if the log holds no
    /// entry at prevLogIndex with prevLogTerm; delete a conflicting suffix;
    /// append new entries; commitIndex = min(leaderCommit, index of last new entry).
    pub(super) fn handle_append(&mut self, from: u64, ae: AppendEntries) {
        if !self.heard_from_leader(from) {
            return;
        }
        let mut prev = ae.prev_log_index;
        let mut entries = ae.entries;
        let committed = self.log.committed();
        if prev < committed {
            // Committed entries are the leader's too (Leader Completeness):
            // skip them instead of checking terms we may have compacted.
            let skip = ((committed - prev) as usize).min(entries.len());
            entries.drain(..skip);
            prev += skip as u64;
            if prev < committed {
                // Everything in this append is already committed here.
                self.respond_append_success(from, prev, ae.round);
                return;
            }
            let first_term = entries.first().map_or(u64::MAX, |e| e.term);
            if self.log.term(prev).is_some_and(|t| first_term < t) {
                // No leader holding our committed entries sends this.
                return self.refuse(from, Refusal::EntryTermOutOfOrder);
            }
        } else if self.log.term(prev) != Some(ae.prev_log_term) {
            let (conflict_index, conflict_term) = self.log.conflict_hint(prev);
            tracing::debug!(
                node = self.cfg.id,
                term = self.term,
                prev,
                conflict_index,
                conflict_term,
                "rejecting append"
            );
            let resp = AppendEntriesResponse {
                success: false,
                match_index: 0,
                conflict_index,
                conflict_term,
                round: ae.round,
                rejected_index: ae.prev_log_index,
                recovering: !self.is_voter(),
            };
            self.send(from, Body::AppendEntriesResponse(resp));
            return;
        }
        let last_new = prev + entries.len() as u64;
        if let Some(at) = self.log.merge(entries) {
            tracing::debug!(
                node = self.cfg.id,
                term = self.term,
                at,
                "truncated conflicting suffix"
            );
        }
        self.log.commit_to(ae.leader_commit.min(last_new));
        self.respond_append_success(from, last_new, ae.round);
        self.maybe_finish_repair();
    }

    fn respond_append_success(&mut self, to: u64, match_index: u64, round: u64) {
        let resp = AppendEntriesResponse {
            success: true,
            match_index,
            round,
            recovering: !self.is_voter(),
            ..Default::default()
        };
        self.send(to, Body::AppendEntriesResponse(resp));
    }

    /// Figure 13, InstallSnapshot receiver: take chunks at the expected
    /// offsets and hand them to the runtime, which appends them to a file.
    /// Once the last one is in, the runtime makes the snapshot durable and
    /// rebuilds the state machine from it (`on_snapshot_received`); only then
    /// is the log replaced and the leader told. Heartbeats and appends are
    /// answered meanwhile as ever.
    pub(super) fn handle_snapshot_chunk(&mut self, from: u64, is: InstallSnapshot) {
        if !self.heard_from_leader(from) {
            return;
        }
        let Some(meta) = is.meta else { return };
        let round = is.round;
        if meta.index <= self.log.committed() || self.log.term(meta.index) == Some(meta.term) {
            // We already hold everything the snapshot covers.
            if self.incoming_snapshot.is_some_and(|s| !s.complete) {
                self.incoming_snapshot = None;
            }
            if meta.index > self.log.committed() {
                self.log.commit_to(meta.index);
            }
            self.respond_snapshot(from, meta, 0, true, false, round);
            return;
        }
        if let Some(s) = self.incoming_snapshot.filter(|s| s.complete) {
            // One is being installed: this one waits until it is done.
            if s.meta == meta {
                self.incoming_snapshot = Some(IncomingSnapshot { from, round, ..s });
            }
            return;
        }
        let received = match self.incoming_snapshot {
            Some(s) if s.meta == meta => s.received,
            _ if is.offset == 0 => 0,
            _ => return self.respond_snapshot(from, meta, 0, false, true, round),
        };
        if is.offset != received {
            return self.respond_snapshot(from, meta, received, false, true, round);
        }
        let received = received + is.data.len() as u64;
        self.snapshot_chunks_in.push(SnapshotChunkIn {
            meta,
            offset: is.offset,
            data: is.data,
            done: is.done,
        });
        self.incoming_snapshot = Some(IncomingSnapshot {
            meta,
            received,
            complete: is.done,
            from,
            round,
        });
        // The answer waits until the runtime has written the chunk
        // (`on_snapshot_chunk_written`): a leader never outruns our disk.
    }

    /// The runtime appended received chunks up to `next_offset`: the leader
    /// may send the next.
    pub fn on_snapshot_chunk_written(
        &mut self,
        meta: kv_proto::raft::SnapshotMeta,
        next_offset: u64,
    ) {
        let Some(s) = self
            .incoming_snapshot
            .filter(|s| s.meta == meta && !s.complete)
        else {
            return;
        };
        debug_assert!(next_offset <= s.received, "only what arrived is written");
        self.respond_snapshot(s.from, meta, next_offset, false, false, s.round);
    }

    /// The runtime made the snapshot received from the leader durable and
    /// rebuilt a state machine from it. Returns true if the log now starts
    /// after it: the runtime must then replace its state machine with that
    /// one (and the leader is told, once the log says so durably). False if
    /// the log caught up past it meanwhile: the runtime keeps its own.
    #[must_use]
    pub fn on_snapshot_received(&mut self, snapshot: SnapshotInfo) -> bool {
        let Some(incoming) = self
            .incoming_snapshot
            .filter(|s| s.complete && s.meta == snapshot.meta)
        else {
            return false;
        };
        self.incoming_snapshot = None;
        let meta = snapshot.meta;
        if meta.index <= self.log.committed() || self.log.term(meta.index) == Some(meta.term) {
            // Entries arrived meanwhile by other means: the log holds all
            // the snapshot covers, committed since it is in a snapshot.
            // Installing would drop the entries after it, which this node
            // may have acknowledged (Figure 13, step 6: retain them).
            if meta.index > self.log.committed() {
                self.log.commit_to(meta.index);
            }
            self.respond_snapshot(incoming.from, meta, 0, true, false, incoming.round);
            return false;
        }
        tracing::info!(
            node = self.cfg.id,
            term = self.term,
            index = meta.index,
            bytes = snapshot.size,
            "installing snapshot"
        );
        self.log.install_snapshot(meta.index, meta.term);
        self.snapshot = Some(snapshot);
        self.snapshot_to_install = Some(meta);
        let (to, round) = (incoming.from, incoming.round);
        self.respond_snapshot(to, meta, snapshot.size, true, false, round);
        true
    }

    fn respond_snapshot(
        &mut self,
        to: u64,
        meta: kv_proto::raft::SnapshotMeta,
        next_offset: u64,
        done: bool,
        reject: bool,
        round: u64,
    ) {
        let resp = InstallSnapshotResponse {
            meta: Some(meta),
            next_offset,
            done,
            reject,
            round,
            recovering: !self.is_voter(),
        };
        self.send(to, Body::InstallSnapshotResponse(resp));
    }
}
