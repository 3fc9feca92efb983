//! The follower's side of replication: AppendEntries (§5.3, Figure 2
//! "Receiver implementation") and InstallSnapshot (§7, Figure 13).

use kv_proto::raft::{
    message::Body, AppendEntries, AppendEntriesResponse, InstallSnapshot, InstallSnapshotResponse,
    Snapshot,
};

use super::core::{IncomingSnapshot, RaftCore};
use super::ready::Role;

impl RaftCore {
    /// The leader of our term is alive: follow it and restart the timer.
    fn heard_from_leader(&mut self, leader: u64) {
        assert_ne!(
            self.role,
            Role::Leader,
            "two leaders in term {} ({} and {leader})",
            self.term,
            self.cfg.id
        );
        if self.role != Role::Follower {
            // A candidate that sees a leader of its own term steps down (§5.2).
            self.become_follower(self.term, Some(leader));
        }
        self.leader = Some(leader);
        self.election_elapsed = 0;
    }

    /// Figure 2, AppendEntries receiver: reply false if the log holds no
    /// entry at prevLogIndex with prevLogTerm; delete a conflicting suffix;
    /// append new entries; commitIndex = min(leaderCommit, index of last new entry).
    pub(super) fn handle_append(&mut self, from: u64, ae: AppendEntries) {
        self.heard_from_leader(from);
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

    /// Figure 13, InstallSnapshot receiver: collect chunks at the expected
    /// offsets; when complete, keep the log if it already holds the
    /// snapshot's last entry, otherwise replace the whole log with it.
    pub(super) fn handle_snapshot_chunk(&mut self, from: u64, is: InstallSnapshot) {
        self.heard_from_leader(from);
        let Some(meta) = is.meta else { return };
        let round = is.round;
        if meta.index <= self.log.committed() || self.log.term(meta.index) == Some(meta.term) {
            // We already hold everything the snapshot covers.
            self.incoming_snapshot = None;
            if meta.index > self.log.committed() {
                self.log.commit_to(meta.index);
            }
            self.respond_snapshot(from, meta, 0, true, false, round);
            return;
        }
        let same = self
            .incoming_snapshot
            .as_ref()
            .is_some_and(|s| s.meta == meta);
        if !same {
            if is.offset != 0 {
                self.respond_snapshot(from, meta, 0, false, true, round);
                return;
            }
            self.incoming_snapshot = Some(IncomingSnapshot {
                meta,
                data: Vec::with_capacity(is.data.len()),
            });
        }
        let Some(incoming) = self.incoming_snapshot.as_mut() else {
            return;
        };
        let expected = incoming.data.len() as u64;
        if is.offset != expected {
            self.respond_snapshot(from, meta, expected, false, true, round);
            return;
        }
        incoming.data.extend_from_slice(&is.data);
        let received = incoming.data.len() as u64;
        if !is.done {
            self.respond_snapshot(from, meta, received, false, false, round);
            return;
        }
        let Some(complete) = self.incoming_snapshot.take() else {
            return;
        };
        tracing::info!(
            node = self.cfg.id,
            term = self.term,
            index = meta.index,
            bytes = received,
            "installing snapshot"
        );
        self.log.install_snapshot(meta.index, meta.term);
        let snapshot = Snapshot {
            meta: Some(meta),
            data: complete.data.into(),
        };
        self.snapshot = Some(snapshot.clone());
        self.snapshot_to_install = Some(snapshot);
        self.respond_snapshot(from, meta, received, true, false, round);
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
