//! A node's standing: whether it may vote and be counted (protocol-aware
//! recovery, after Alagappan et al., FAST 2018).
//!
//! Storage tells the core at start what it found ([`Found`]). A node whose
//! storage is intact is a voter. A node whose storage is empty is
//! *discovering*: it asks every other member where it stands; if every one
//! of them is fresh too, the cluster is brand new and it becomes a voter; if
//! any holds state, its own data dir was wiped and it is *recovering*. A node
//! whose storage lost something it may have acknowledged (a damaged record
//! or snapshot) is recovering from the start. The recovering mark is
//! durable (`HardState::recovering`) until repair.
//!
//! A recovering node grants no vote, never campaigns, and its leader counts
//! it toward no quorum (commit, ReadIndex, check-quorum); it still stores
//! what the leader sends. It becomes a voter again once a leader of a term
//! at or above its *repair floor* has caught it up:
//!
//! 1. the floor is one above the highest term reported by *every* other
//!    member, asked after the damage (replies echo a per-start nonce, so a
//!    reply to an earlier life never counts);
//! 2. the node must hold, durably, that leader's log up to a commit index
//!    whose entry is of the leader's term.
//!
//! Why this is safe while at most a minority is damaged at once:
//!
//! - *Lost votes.* Say the node voted for C in term T and lost the record.
//!   C persisted term T before asking, so C reports a term >= T. If C lost
//!   its state too, C's new life never counts that old vote (votes are
//!   counted in memory), and if C's old life already won T, a healthy member
//!   of its quorum reports >= T (with three members, losing both C and this
//!   node is losing a majority). So the floor is above every term this node
//!   voted in. After repair it votes only in terms above the repairing
//!   leader's, and it records that leader as its vote for the leader's term.
//! - *Lost acknowledgements.* An entry committed with this node's lost
//!   acknowledgement was committed in a term the counting leader (or a
//!   healthy member of its quorum) reports, so in a term below the floor. A
//!   leader of a term at or above the floor holds it (its voters exclude this
//!   node), below its first commit of its own term, which this node must
//!   hold before it is repaired. The node's stale acknowledgements, still in
//!   flight, carry terms below the floor and are ignored by such a leader.
//! - *Quorums.* Until repaired, nothing this node says counts, so commits,
//!   ReadIndex rounds and quorum checks rest on voters only.
//!
//! A leader whose term is below the floor cannot repair the node; once the
//! node holds that leader's log it asks (`RepairRequest`) for an election in
//! a term at the floor, which a healthy leader wins at once (voters do not
//! ignore a transfer election for having a leader).
//!
//! When every member but a minority is damaged or fresh, no leader can be
//! elected: the cluster stops serving and the recovering nodes say why.

use std::collections::BTreeMap;

use kv_proto::raft::{message::Body, RepairRequest, StatusQuery, StatusReply};

use super::core::RaftCore;
use super::quorum::majority;
use super::ready::Role;

/// What storage found when the node started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Found {
    /// This node's durable state is all there.
    #[default]
    Intact,
    /// The data dir holds no state at all: a member of a brand-new cluster,
    /// or a member whose disk was replaced. The core finds out which.
    Empty,
    /// Storage lost state this node may have acknowledged.
    Damaged,
}

/// Whether a node may vote and be counted toward quorums.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Standing {
    /// A full member.
    Voter,
    /// Its storage was empty; it is asking the others whether the cluster is new.
    Discovering,
    /// Its storage lost state; it waits for a leader to repair it.
    Recovering,
}

/// What another member said of itself in answer to a `StatusQuery`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PeerStatus {
    term: u64,
    fresh: bool,
    recovering: bool,
}

/// The standing-related state of a core.
#[derive(Debug)]
pub(super) struct StandingState {
    pub(super) standing: Standing,
    /// While recovering: the lowest term of a leader that may repair this
    /// node (0 = not learned yet).
    pub(super) repair_floor: u64,
    /// Identifies this start of the node in its status queries.
    nonce: u64,
    /// Answers to this start's queries, by member.
    replies: BTreeMap<u64, PeerStatus>,
    /// Ticks since queries or a repair request last went out.
    elapsed: u64,
    /// The "a majority is damaged" diagnosis was logged.
    told_stuck: bool,
}

impl StandingState {
    /// The standing a node starts in, from what storage found and the hard
    /// state it recovered.
    pub(super) fn new(found: Found, recovering: bool, repair_floor: u64, nonce: u64) -> Self {
        let standing = match (recovering, found) {
            (true, _) | (false, Found::Damaged) => Standing::Recovering,
            (false, Found::Empty) => Standing::Discovering,
            (false, Found::Intact) => Standing::Voter,
        };
        StandingState {
            standing,
            repair_floor: if standing == Standing::Recovering {
                repair_floor
            } else {
                0
            },
            nonce,
            replies: BTreeMap::new(),
            elapsed: 0,
            told_stuck: false,
        }
    }

    /// Whether this node still needs answers from the other members.
    fn wants_status(&self) -> bool {
        match self.standing {
            Standing::Voter => false,
            Standing::Discovering => true,
            Standing::Recovering => self.repair_floor == 0,
        }
    }
}

impl RaftCore {
    /// This node's standing.
    pub fn standing(&self) -> Standing {
        self.st.standing
    }

    /// While recovering: the lowest term of a leader that may repair this
    /// node (0 if not yet known, or not recovering).
    pub fn repair_floor(&self) -> u64 {
        self.st.repair_floor
    }

    /// True if this node may vote, campaign and be counted.
    pub(super) fn is_voter(&self) -> bool {
        self.st.standing == Standing::Voter
    }

    /// Whether this node's storage holds nothing at all.
    fn is_fresh(&self) -> bool {
        self.st.standing == Standing::Discovering
            || (self.is_voter()
                && self.term == 0
                && self.log.last_index() == 0
                && self.snapshot.is_none())
    }

    /// A tick of a node that is not a voter: it never campaigns; it asks
    /// for what it still needs.
    pub(super) fn tick_standing(&mut self) {
        self.st.elapsed += 1;
        if self.st.wants_status() {
            if self.st.elapsed >= self.cfg.heartbeat_ticks {
                self.st.elapsed = 0;
                self.send_status_queries();
            }
        } else if self.st.elapsed >= self.cfg.election_ticks {
            self.st.elapsed = 0;
            self.maybe_request_repair();
        }
    }

    /// Asks every member that has not answered this start's query yet.
    pub(super) fn send_status_queries(&mut self) {
        let query = StatusQuery {
            nonce: self.st.nonce,
        };
        let missing: Vec<u64> = self
            .peers
            .iter()
            .copied()
            .filter(|p| !self.st.replies.contains_key(p))
            .collect();
        for peer in missing {
            self.send(peer, Body::StatusQuery(query));
        }
    }

    /// Says where this node stands, in any standing, without touching terms.
    pub(super) fn answer_status_query(&mut self, from: u64, q: StatusQuery) {
        let reply = StatusReply {
            nonce: q.nonce,
            fresh: self.is_fresh(),
            recovering: self.st.standing == Standing::Recovering,
        };
        self.send(from, Body::StatusReply(reply));
    }

    /// Records an answer to this start's query; decides once all are in.
    pub(super) fn on_status_reply(&mut self, from: u64, term: u64, r: StatusReply) {
        if r.nonce != self.st.nonce || !self.st.wants_status() {
            return;
        }
        self.st.replies.insert(
            from,
            PeerStatus {
                term,
                fresh: r.fresh,
                recovering: r.recovering,
            },
        );
        self.maybe_conclude_status();
    }

    /// Once every other member has answered: a discovering node learns
    /// whether the cluster is new; a recovering node learns its floor.
    pub(super) fn maybe_conclude_status(&mut self) {
        if !self.st.wants_status() || self.st.replies.len() < self.peers.len() {
            return;
        }
        let all_fresh = self.st.replies.values().all(|s| s.fresh);
        if self.st.standing == Standing::Discovering && all_fresh {
            tracing::info!(
                node = self.cfg.id,
                term = self.term,
                "every member's storage is empty: forming a new cluster"
            );
            self.st.standing = Standing::Voter;
            // Say so durably at once: storage that holds any record is never
            // taken for a wiped one, so a crash now costs this node nothing.
            self.force_hard_state = true;
            return;
        }
        if self.st.standing == Standing::Discovering {
            // Concludes again, as recovering, with the same answers.
            self.begin_recovering("its data dir is empty but other members hold state");
            return;
        }
        let highest = self.st.replies.values().map(|s| s.term).max().unwrap_or(0);
        self.st.repair_floor = highest.max(self.term) + 1;
        debug_assert!(self.st.repair_floor > self.term, "the floor lies ahead");
        tracing::info!(
            node = self.cfg.id,
            term = self.term,
            floor = self.st.repair_floor,
            "recovering: a leader of term {} or later will repair this node",
            self.st.repair_floor
        );
        self.diagnose_stuck();
    }

    /// Logs once when too many members are damaged for any leader to exist.
    fn diagnose_stuck(&mut self) {
        let not_voters = 1 + self
            .st
            .replies
            .values()
            .filter(|s| s.recovering || s.fresh)
            .count();
        let voters = self.cfg.voters.len() - not_voters;
        if voters < majority(self.cfg.voters.len()) && !self.st.told_stuck {
            self.st.told_stuck = true;
            tracing::error!(
                node = self.cfg.id,
                term = self.term,
                voters,
                members = self.cfg.voters.len(),
                "too few members hold intact state to elect a leader; this \
                 cluster cannot repair itself and serves nothing until an \
                 operator restores a majority's data"
            );
        }
    }

    /// This node's storage turned out to have lost state (or a discovering
    /// node found an existing cluster): it stops voting until repaired.
    pub(super) fn begin_recovering(&mut self, why: &str) {
        debug_assert_ne!(self.role, Role::Leader, "a leader's storage is its own");
        if self.st.standing == Standing::Recovering {
            return;
        }
        tracing::warn!(
            node = self.cfg.id,
            term = self.term,
            "recovering: {why}; this node will not vote until a leader repairs it"
        );
        self.st.standing = Standing::Recovering;
        self.st.repair_floor = 0;
        self.maybe_conclude_status();
    }

    /// After the log or its durability moved: a recovering node that holds
    /// a leader's log durably, up to a commit of that leader's own term, in
    /// a term at or above its floor, is a voter again.
    pub(super) fn maybe_finish_repair(&mut self) {
        if self.st.standing != Standing::Recovering
            || self.st.repair_floor == 0
            || self.term < self.st.repair_floor
        {
            return;
        }
        let Some(leader) = self.leader else { return };
        let committed = self.log.committed();
        if self.log.term(committed) != Some(self.term) || self.log.persisted() < committed {
            return;
        }
        tracing::info!(
            node = self.cfg.id,
            term = self.term,
            leader,
            committed,
            "repaired by the leader: voting again"
        );
        self.st.standing = Standing::Voter;
        self.st.repair_floor = 0;
        if self.vote == 0 {
            // Never vote for another in the term of the leader that repaired us.
            self.vote = leader;
        }
    }

    /// A recovering node that holds its leader's log but whose leader's term
    /// is below the floor asks for an election at the floor.
    fn maybe_request_repair(&mut self) {
        let (Some(leader), floor) = (self.leader, self.st.repair_floor) else {
            return;
        };
        if self.st.standing != Standing::Recovering || floor == 0 || self.term >= floor {
            return;
        }
        if self.log.persisted() < self.log.committed() {
            return;
        }
        self.send(leader, Body::RepairRequest(RepairRequest { floor }));
    }

    /// The leader's side of a `RepairRequest`: once it has settled in its
    /// term and the follower holds its log up to the commit index, it holds
    /// an election at the floor (which it wins at once if healthy).
    pub(super) fn handle_repair_request(&mut self, from: u64, r: RepairRequest) {
        if self.role != Role::Leader || r.floor <= self.term {
            return;
        }
        let settled = self.log.term(self.log.committed()) == Some(self.term);
        let caught_up = self
            .progress
            .get(&from)
            .is_some_and(|p| p.recovering && p.match_index >= self.log.committed());
        if !settled || !caught_up {
            return;
        }
        tracing::info!(
            node = self.cfg.id,
            term = self.term,
            peer = from,
            floor = r.floor,
            "a recovering member needs a later term: holding an election"
        );
        self.campaign_transfer(r.floor);
    }
}
