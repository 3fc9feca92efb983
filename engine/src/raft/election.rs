//! Leader election (§5.2, §5.4.1) with an optional pre-vote round (thesis §9.6).

use kv_proto::raft::{message::Body, RequestVote, RequestVoteResponse};

use super::core::RaftCore;
use super::progress::Progress;
use super::quorum::majority;
use super::ready::Role;

impl RaftCore {
    /// The election timer fired: start a (pre-)election.
    pub(super) fn campaign(&mut self) {
        debug_assert!(self.is_voter(), "only a voter campaigns");
        if self.cfg.pre_vote {
            self.become_pre_candidate();
        } else {
            self.become_candidate(self.term + 1, false);
        }
    }

    /// An election asked for by the leader of the current term (thesis
    /// §3.10), or held by the leader itself: no pre-vote, at a term of at
    /// least `min_term`, and voters do not ignore it for having a leader.
    pub(super) fn campaign_transfer(&mut self, min_term: u64) {
        if self.role == Role::Leader {
            self.become_follower(self.term, None);
        }
        self.become_candidate(min_term.max(self.term + 1), true);
    }

    /// The leader asks us to take over at once.
    pub(super) fn handle_timeout_now(&mut self, from: u64) {
        if !self.is_voter() || self.role == Role::Leader || self.leader != Some(from) {
            return;
        }
        tracing::info!(
            node = self.cfg.id,
            term = self.term,
            from,
            "leader handed over: starting an election"
        );
        self.campaign_transfer(self.term + 1);
    }

    /// Asks the others whether they would vote for us in the next term,
    /// without changing any durable state.
    fn become_pre_candidate(&mut self) {
        assert_ne!(
            self.role,
            Role::Leader,
            "invalid transition [leader -> pre-candidate]"
        );
        self.role = Role::PreCandidate;
        self.leader = None;
        self.votes.clear();
        self.votes.insert(self.cfg.id, true);
        self.reset_election_timer();
        tracing::debug!(node = self.cfg.id, term = self.term, "starting pre-vote");
        if self.tally_won() {
            self.become_candidate(self.term + 1, false);
            return;
        }
        let rv = self.vote_request(true, false);
        for to in self.peers.clone() {
            self.send_with_term(to, self.term + 1, Body::RequestVote(rv));
        }
    }

    /// §5.2: "increment currentTerm, vote for self, reset election timer,
    /// send RequestVote RPCs to all other servers" (to `term`, usually the
    /// next one).
    fn become_candidate(&mut self, term: u64, transfer: bool) {
        assert_ne!(
            self.role,
            Role::Leader,
            "invalid transition [leader -> candidate]"
        );
        assert!(term > self.term, "a candidate moves to a later term");
        debug_assert!(self.is_voter(), "only a voter campaigns");
        self.term = term;
        self.vote = self.cfg.id;
        self.role = Role::Candidate;
        self.leader = None;
        self.votes.clear();
        self.votes.insert(self.cfg.id, true);
        self.reset_election_timer();
        tracing::info!(node = self.cfg.id, term = self.term, "starting election");
        if self.tally_won() {
            self.become_leader();
            return;
        }
        let rv = self.vote_request(false, transfer);
        for to in self.peers.clone() {
            self.send(to, Body::RequestVote(rv));
        }
    }

    fn vote_request(&self, pre_vote: bool, transfer: bool) -> RequestVote {
        RequestVote {
            pre_vote,
            last_log_index: self.log.last_index(),
            last_log_term: self.log.last_term(),
            transfer,
        }
    }

    /// §5.2 and §8: the winner replicates to everyone and appends a no-op so
    /// that entries of earlier terms get committed (Figure 8).
    pub(super) fn become_leader(&mut self) {
        assert_eq!(
            self.role,
            Role::Candidate,
            "only a candidate becomes leader"
        );
        self.role = Role::Leader;
        self.leader = Some(self.cfg.id);
        self.votes.clear();
        self.transfer = None;
        self.lease.reset();
        self.heartbeat_elapsed = 0;
        self.election_elapsed = 0;
        let next = self.log.last_index() + 1;
        self.uncommitted_bytes = self
            .log
            .bytes_between(self.log.committed() + 1, self.log.last_index());
        self.progress = self
            .peers
            .iter()
            .map(|&p| (p, Progress::new(next)))
            .collect();
        tracing::info!(
            node = self.cfg.id,
            term = self.term,
            last_index = self.log.last_index(),
            "became leader"
        );
        let index = self.log.last_index() + 1;
        self.log.push(kv_proto::raft::Entry {
            term: self.term,
            index,
            data: Default::default(),
        });
        self.needs_broadcast = true;
    }

    /// §5.2, §5.4.1: grant at most one vote per term, and only to a
    /// candidate whose log is at least as up-to-date as ours. A pre-vote is
    /// granted on the log alone and changes nothing here.
    /// A node that is not a voter (see `standing.rs`) grants nothing.
    pub(super) fn handle_vote_request(&mut self, from: u64, msg_term: u64, rv: RequestVote) {
        let up_to_date =
            self.is_voter() && self.log.is_up_to_date(rv.last_log_index, rv.last_log_term);
        if rv.pre_vote {
            let granted = msg_term > self.term && up_to_date;
            let term = if granted { msg_term } else { self.term };
            self.send_with_term(
                from,
                term,
                Body::RequestVoteResponse(RequestVoteResponse {
                    pre_vote: true,
                    granted,
                }),
            );
            return;
        }
        debug_assert_eq!(
            msg_term, self.term,
            "a higher term was adopted before this point"
        );
        let can_vote = self.vote == from || (self.vote == 0 && self.leader.is_none());
        let granted = can_vote && up_to_date;
        if granted {
            self.vote = from;
            self.reset_election_timer();
        }
        tracing::debug!(
            node = self.cfg.id,
            term = self.term,
            candidate = from,
            granted,
            "vote request"
        );
        self.send(
            from,
            Body::RequestVoteResponse(RequestVoteResponse {
                pre_vote: false,
                granted,
            }),
        );
    }

    /// Counts a (pre-)vote; a majority for wins the round, a majority against loses it.
    pub(super) fn handle_vote_response(
        &mut self,
        from: u64,
        msg_term: u64,
        r: RequestVoteResponse,
    ) {
        let counts = match self.role {
            Role::PreCandidate => r.pre_vote && (!r.granted || msg_term == self.term + 1),
            Role::Candidate => !r.pre_vote && msg_term == self.term,
            _ => false,
        };
        if !counts {
            return;
        }
        self.votes.insert(from, r.granted);
        if self.tally_won() {
            if self.role == Role::PreCandidate {
                self.become_candidate(self.term + 1, false);
            } else {
                self.become_leader();
            }
        } else if self.tally_lost() {
            self.become_follower(self.term, None);
        }
    }

    fn tally_won(&self) -> bool {
        self.votes.values().filter(|&&g| g).count() >= majority(self.cfg.voters.len())
    }

    fn tally_lost(&self) -> bool {
        self.votes.values().filter(|&&g| !g).count() >= majority(self.cfg.voters.len())
    }
}
