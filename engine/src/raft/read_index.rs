//! Linearizable reads without writing to the log (ReadIndex, thesis §6.4).
//!
//! A read is served at the commit index the leader had when the read
//! arrived, once (1) the leader has committed an entry of its own term (so
//! that commit index is at least every earlier leader's) and (2) a majority
//! has answered a message sent after the read arrived (so no newer leader
//! existed then). Rounds number those messages: a read waits for round
//! `r`, and a follower's response echoes the round of the message it
//! answers.

use std::collections::VecDeque;

use super::ready::ReadState;

#[derive(Debug, Clone, Copy)]
struct PendingRead {
    id: u64,
    index: u64,
    round: u64,
}

/// The leader's queue of reads waiting for confirmation.
#[derive(Debug, Default)]
pub struct ReadIndex {
    /// The last round sent.
    round: u64,
    /// A read arrived since the last round was sent.
    round_wanted: bool,
    /// Reads waiting for their round to be acknowledged, in round order.
    pending: VecDeque<PendingRead>,
    /// Reads that arrived before the leader committed an entry of its term.
    awaiting_commit: Vec<u64>,
    ready: Vec<ReadState>,
    failed: Vec<u64>,
}

impl ReadIndex {
    /// Registers a read at commit index `committed`.
    pub fn request(&mut self, id: u64, committed: u64, committed_in_term: bool) {
        if !committed_in_term {
            self.awaiting_commit.push(id);
            return;
        }
        debug_assert!(
            self.pending
                .back()
                .is_none_or(|r| r.round <= self.round + 1 && r.index <= committed),
            "reads queue in round and commit-index order"
        );
        self.pending.push_back(PendingRead {
            id,
            index: committed,
            round: self.round + 1,
        });
        self.round_wanted = true;
    }

    /// A read served at once at `index` (the leader's lease holds).
    pub fn serve_now(&mut self, id: u64, index: u64) {
        self.ready.push(ReadState { id, index });
    }

    /// The leader committed its first entry of the term at `committed`.
    pub fn on_term_commit(&mut self, committed: u64) {
        debug_assert!(
            self.pending.iter().all(|r| r.index <= committed),
            "no read waits at an index the term has not committed"
        );
        for id in std::mem::take(&mut self.awaiting_commit) {
            self.request(id, committed, true);
        }
    }

    /// Whether a heartbeat round must go out.
    pub fn needs_round(&self) -> bool {
        self.round_wanted
    }

    /// Starts a new round; returns its number for the outgoing messages.
    pub fn start_round(&mut self) -> u64 {
        self.round += 1;
        self.round_wanted = false;
        debug_assert!(
            self.pending.iter().all(|r| r.round <= self.round),
            "every waiting read is covered by a round sent or this one"
        );
        self.round
    }

    /// The round the latest messages carry.
    pub fn current_round(&self) -> u64 {
        self.round
    }

    /// A majority has acknowledged every round up to `round`.
    pub fn confirm_up_to(&mut self, round: u64) {
        while let Some(read) = self.pending.front() {
            if read.round > round {
                break;
            }
            self.ready.push(ReadState {
                id: read.id,
                index: read.index,
            });
            self.pending.pop_front();
        }
    }

    /// Leadership was lost: every waiting read fails.
    pub fn fail_all(&mut self) {
        self.failed.extend(self.pending.drain(..).map(|r| r.id));
        self.failed.append(&mut self.awaiting_commit);
        self.round_wanted = false;
        debug_assert!(
            self.pending.is_empty() && self.awaiting_commit.is_empty(),
            "a deposed leader keeps no read waiting"
        );
    }

    /// True if confirmed or failed reads wait to be handed out.
    pub fn has_output(&self) -> bool {
        !self.ready.is_empty() || !self.failed.is_empty() || self.round_wanted
    }

    /// Hands out confirmed and failed reads.
    pub fn take_output(&mut self) -> (Vec<ReadState>, Vec<u64>) {
        (
            std::mem::take(&mut self.ready),
            std::mem::take(&mut self.failed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wait_for_a_round_sent_after_they_arrive() {
        let mut r = ReadIndex::default();
        let first = r.start_round();
        r.request(7, 10, true);
        r.confirm_up_to(first);
        assert!(
            r.take_output().0.is_empty(),
            "round {first} went out before the read"
        );
        let second = r.start_round();
        r.confirm_up_to(second);
        assert_eq!(r.take_output().0, vec![ReadState { id: 7, index: 10 }]);
    }

    #[test]
    fn reads_before_the_first_commit_of_the_term_wait_for_it() {
        let mut r = ReadIndex::default();
        r.request(1, 3, false);
        assert!(!r.needs_round());
        r.on_term_commit(5);
        let round = r.start_round();
        r.confirm_up_to(round);
        assert_eq!(r.take_output().0, vec![ReadState { id: 1, index: 5 }]);
    }

    #[test]
    fn losing_leadership_fails_every_waiting_read() {
        let mut r = ReadIndex::default();
        r.request(1, 3, false);
        r.request(2, 3, true);
        r.fail_all();
        let (ok, failed) = r.take_output();
        assert!(ok.is_empty());
        assert_eq!(failed, vec![2, 1]);
    }
}
