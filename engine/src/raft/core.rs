//! The Raft state machine: the struct, its public inputs, term handling
//! (Figure 2, "Rules for Servers: All Servers") and the `Ready` it produces.
//!
//! Elections live in `election.rs`, the leader's side of replication in
//! `replication.rs`, the follower's side in `follower.rs`.

use std::collections::BTreeMap;

use bytes::Bytes;
use kv_proto::raft::{
    message::Body, AppendEntriesResponse, Entry, HardState, Message, RequestVoteResponse,
    SnapshotMeta,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::config::{Config, ConfigError};
use super::log::RaftLog;
use super::progress::Progress;
use super::read_index::ReadIndex;
use super::ready::{
    ProposeError, Proposed, ReadState, Ready, Role, SnapshotChunkIn, SnapshotChunkOut,
    SnapshotInfo, SoftState,
};
use super::standing::{Found, StandingState};
use super::transfer::{Lease, Transfer};
use super::validate::{self, Refusal, Refusals};

/// The durable state a core restarts from (what storage recovered).
#[derive(Debug, Clone, Default)]
pub struct Restored {
    /// Term, vote and commit index last persisted (and whether the node is
    /// recovering).
    pub hard_state: HardState,
    /// The latest snapshot, if any (its data stays on disk).
    pub snapshot: Option<SnapshotInfo>,
    /// The durable entries after the snapshot, contiguous.
    pub entries: Vec<Entry>,
    /// What storage found: intact, empty, or damaged (see `standing.rs`).
    pub found: Found,
    /// A value fresh for every start of the node (the runtime draws it at
    /// random), so answers meant for an earlier start are told apart.
    pub nonce: u64,
}

/// A snapshot being received from the leader, chunk by chunk (its data
/// goes to the runtime, which appends it to a file).
#[derive(Debug, Clone, Copy)]
pub(super) struct IncomingSnapshot {
    pub(super) meta: SnapshotMeta,
    /// Bytes received so far, in order.
    pub(super) received: u64,
    /// Every chunk is in: the runtime is making it durable and rebuilding
    /// the state machine from it; the leader is answered once it says so.
    pub(super) complete: bool,
    /// Who sent it and the read round of the last chunk.
    pub(super) from: u64,
    pub(super) round: u64,
}

/// One Raft node's consensus state. Pure: no I/O, no clock, seeded randomness.
#[derive(Debug)]
pub struct RaftCore {
    pub(super) cfg: Config,
    /// Voters other than this node.
    pub(super) peers: Vec<u64>,
    pub(super) term: u64,
    pub(super) vote: u64,
    pub(super) role: Role,
    pub(super) leader: Option<u64>,
    pub(super) log: RaftLog,
    rng: ChaCha8Rng,
    /// Ticks since the last election reset (heard from a leader, granted a
    /// vote, started an election; for a leader: since the last quorum check).
    pub(super) election_elapsed: u64,
    pub(super) heartbeat_elapsed: u64,
    randomized_election_ticks: u64,
    /// Votes received in the current (pre-)election.
    pub(super) votes: BTreeMap<u64, bool>,
    /// Per-follower replication state; only a leader has it.
    pub(super) progress: BTreeMap<u64, Progress>,
    pub(super) reads: ReadIndex,
    /// The latest snapshot on disk, to send to followers that need it.
    pub(super) snapshot: Option<SnapshotInfo>,
    pub(super) incoming_snapshot: Option<IncomingSnapshot>,
    pub(super) snapshot_to_install: Option<SnapshotMeta>,
    pub(super) snapshot_chunks_out: Vec<SnapshotChunkOut>,
    pub(super) snapshot_chunks_in: Vec<SnapshotChunkIn>,
    /// New entries wait to be sent to followers (sent once per `ready()`, so
    /// many proposals share one append).
    pub(super) needs_broadcast: bool,
    msgs: Vec<Message>,
    persisted_msgs: Vec<Message>,
    last_soft: SoftState,
    last_hard: HardState,
    /// Reused buffer for commit-index arithmetic.
    pub(super) match_scratch: Vec<u64>,
    /// Voter, discovering or recovering, and what that takes.
    pub(super) st: StandingState,
    /// The next Ready carries the hard state even if unchanged.
    pub(super) force_hard_state: bool,
    /// Ticks since start (rate-limited logging, leases).
    pub(super) ticks: u64,
    /// A leadership transfer in progress (leader only).
    pub(super) transfer: Option<Transfer>,
    /// The leader's lease, for lease reads.
    pub(super) lease: Lease,
    /// A leader's payload bytes not yet committed (for flow control).
    pub(super) uncommitted_bytes: u64,
    /// Peer messages refused, by kind.
    refusals: Refusals,
}

impl RaftCore {
    /// A core starting from `restored` durable state (use `Restored::default()`
    /// for a brand-new node).
    pub fn new(cfg: Config, restored: Restored) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let (snap_index, snap_term) = restored
            .snapshot
            .map_or((0, 0), |s| (s.meta.index, s.meta.term));
        let log = RaftLog::restore(
            snap_index,
            snap_term,
            restored.entries,
            restored.hard_state.commit,
        );
        let peers = cfg
            .voters
            .iter()
            .copied()
            .filter(|&v| v != cfg.id)
            .collect();
        let rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let hard = restored.hard_state;
        let st = StandingState::new(
            restored.found,
            hard.recovering,
            hard.repair_floor,
            restored.nonce,
        );
        let mut core = RaftCore {
            peers,
            term: hard.term,
            vote: hard.vote,
            role: Role::Follower,
            leader: None,
            log,
            rng,
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_ticks: cfg.election_ticks,
            votes: BTreeMap::new(),
            progress: BTreeMap::new(),
            reads: ReadIndex::default(),
            snapshot: restored.snapshot,
            incoming_snapshot: None,
            snapshot_to_install: None,
            snapshot_chunks_out: Vec::new(),
            snapshot_chunks_in: Vec::new(),
            needs_broadcast: false,
            msgs: Vec::new(),
            persisted_msgs: Vec::new(),
            last_soft: SoftState {
                role: Role::Follower,
                term: hard.term,
                leader: None,
                standing: st.standing,
            },
            last_hard: hard,
            match_scratch: Vec::with_capacity(cfg.voters.len()),
            st,
            force_hard_state: false,
            ticks: 0,
            transfer: None,
            lease: Lease::default(),
            uncommitted_bytes: 0,
            refusals: Refusals::default(),
            cfg,
        };
        core.last_hard.commit = core.log.committed();
        core.reset_election_timer();
        if !core.is_voter() {
            core.send_status_queries();
            core.maybe_conclude_status();
        }
        Ok(core)
    }

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.cfg.id
    }

    /// Current term.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// Current role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The leader of the current term, if known.
    pub fn leader(&self) -> Option<u64> {
        self.leader
    }

    /// Who this node voted for in the current term (0 = nobody).
    pub fn vote(&self) -> u64 {
        self.vote
    }

    /// The in-memory log (read-only).
    pub fn log(&self) -> &RaftLog {
        &self.log
    }

    /// The configuration this core runs with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Peer messages refused so far, by kind (see `validate.rs`).
    pub fn refusals(&self) -> &BTreeMap<Refusal, u64> {
        self.refusals.counts()
    }

    /// Advances logical time by one tick.
    pub fn tick(&mut self) {
        self.ticks += 1;
        self.election_elapsed += 1;
        if self.role == Role::Leader {
            self.tick_transfer();
            self.tick_leader();
        } else if !self.is_voter() {
            self.tick_standing();
        } else if self.election_elapsed >= self.randomized_election_ticks {
            self.campaign();
        }
    }

    /// Proposes `data` as a new log entry. Only a leader accepts.
    pub fn propose(&mut self, data: Bytes) -> Result<Proposed, ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        }
        if data.is_empty() {
            // Empty data marks the leader's no-op entry.
            return Err(ProposeError::Empty);
        }
        if self.transfer.is_some() {
            // Whatever is appended now would be left with an unknown
            // outcome when leadership moves.
            return Err(ProposeError::Transferring);
        }
        if self.log.last_index() - self.log.committed() >= self.cfg.max_uncommitted_entries
            || (self.uncommitted_bytes > 0
                && self.uncommitted_bytes + data.len() as u64 > self.cfg.max_uncommitted_bytes)
        {
            return Err(ProposeError::Overloaded);
        }
        self.uncommitted_bytes += data.len() as u64;
        let index = self.log.last_index() + 1;
        self.log.push(Entry {
            term: self.term,
            index,
            data,
        });
        self.needs_broadcast = true;
        Ok(Proposed {
            index,
            term: self.term,
        })
    }

    /// Asks for a linearizable read with the driver's `id`; it comes back in
    /// `Ready::read_states` once a quorum has confirmed this leadership, or
    /// in `Ready::failed_reads` if leadership is lost first.
    pub fn read_index(&mut self, id: u64) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        }
        let committed_in_term = self.log.term(self.log.committed()) == Some(self.term);
        if committed_in_term && self.lease_holds() {
            self.reads.serve_now(id, self.log.committed());
            return Ok(());
        }
        self.reads
            .request(id, self.log.committed(), committed_in_term);
        if self.peers.is_empty() {
            self.reads.confirm_up_to(u64::MAX);
        }
        Ok(())
    }

    /// Storage reports that the log up to `(index, term)` is durable.
    pub fn on_persisted(&mut self, index: u64, term: u64) {
        self.log.on_persisted(index, term);
        if self.role == Role::Leader {
            // The leader counts itself toward a commit only once durable.
            self.maybe_commit();
            self.maybe_send_timeout_now();
        } else {
            self.maybe_finish_repair();
        }
    }

    /// Handles a message from a peer (Figure 2, "All Servers": a higher term
    /// makes any node a follower; stale terms are refused).
    pub fn step(&mut self, m: Message) {
        let addressed =
            m.to == self.cfg.id && m.from != self.cfg.id && self.peers.contains(&m.from);
        let checked = if addressed {
            validate::check_shape(&m)
        } else {
            Err(Refusal::Misaddressed)
        };
        if let Err(kind) = checked {
            return self.refuse(m.from, kind);
        }
        let Some(body) = m.body else { return };
        // Status traffic stands outside the term rules: it changes no term.
        let body = match body {
            Body::StatusQuery(q) => return self.answer_status_query(m.from, q),
            Body::StatusReply(r) => return self.on_status_reply(m.from, m.term, r),
            other => other,
        };
        if self.st.standing == super::Standing::Discovering {
            // Until it knows whether the cluster is new, a node with empty
            // storage writes nothing; a leader's message settles it.
            if !matches!(body, Body::AppendEntries(_) | Body::InstallSnapshot(_)) {
                return;
            }
            self.begin_recovering("a leader exists while this node's data dir is empty");
        }
        if m.term > self.term && !self.step_higher_term(m.from, m.term, &body) {
            return;
        }
        if m.term < self.term {
            self.step_lower_term(m.from, &body);
            return;
        }
        match body {
            Body::RequestVote(rv) => self.handle_vote_request(m.from, m.term, rv),
            Body::RequestVoteResponse(r) => self.handle_vote_response(m.from, m.term, r),
            Body::AppendEntries(ae) => self.handle_append(m.from, ae),
            Body::AppendEntriesResponse(r) => self.handle_append_response(m.from, r),
            Body::InstallSnapshot(is) => self.handle_snapshot_chunk(m.from, is),
            Body::InstallSnapshotResponse(r) => self.handle_snapshot_response(m.from, r),
            Body::RepairRequest(r) => self.handle_repair_request(m.from, r),
            Body::TimeoutNow(_) => self.handle_timeout_now(m.from),
            Body::StatusQuery(_) | Body::StatusReply(_) => {}
        }
    }

    /// Counts a refused peer message and logs it (at a limited rate).
    pub(super) fn refuse(&mut self, from: u64, kind: Refusal) {
        if let Some(suppressed) = self.refusals.record(kind, self.ticks) {
            tracing::warn!(
                node = self.cfg.id,
                term = self.term,
                from,
                reason = kind.as_str(),
                suppressed,
                "refused a peer message"
            );
        }
    }

    /// A message from a higher term. Returns false if it is to be ignored.
    fn step_higher_term(&mut self, from: u64, term: u64, body: &Body) -> bool {
        match body {
            Body::RequestVote(rv) => {
                // Thesis §4.2.3: while we hear from a leader, a vote request
                // (real or pre-vote) from a higher term is not worth a term change.
                // A transfer election was asked for by the leader itself.
                let in_lease = self.cfg.check_quorum
                    && !rv.transfer
                    && (self.leader.is_some() || self.in_start_up_lease())
                    && self.election_elapsed < self.cfg.election_ticks;
                if in_lease {
                    tracing::debug!(
                        node = self.cfg.id,
                        term = self.term,
                        from,
                        "ignoring vote request within leader lease"
                    );
                    return false;
                }
                if !rv.pre_vote {
                    self.become_follower(term, None);
                }
            }
            // A granted pre-vote comes back in the term we would run for.
            Body::RequestVoteResponse(r) if r.pre_vote && r.granted => {}
            Body::AppendEntries(_) | Body::InstallSnapshot(_) => {
                self.become_follower(term, Some(from))
            }
            _ => self.become_follower(term, None),
        }
        true
    }

    /// A message from a lower term: tell a stale leader or pre-candidate the
    /// current term so it steps down; ignore the rest.
    fn step_lower_term(&mut self, from: u64, body: &Body) {
        match body {
            Body::AppendEntries(_) | Body::InstallSnapshot(_) => {
                let resp = AppendEntriesResponse {
                    success: false,
                    recovering: !self.is_voter(),
                    ..Default::default()
                };
                self.send(from, Body::AppendEntriesResponse(resp));
            }
            Body::RequestVote(rv) if rv.pre_vote => {
                let resp = RequestVoteResponse {
                    pre_vote: true,
                    granted: false,
                };
                self.send(from, Body::RequestVoteResponse(resp));
            }
            _ => {}
        }
    }

    /// Queues a message in the current term; whether it may go before the
    /// current writes are durable depends on what it says.
    pub(super) fn send(&mut self, to: u64, body: Body) {
        let term = self.term;
        self.send_with_term(to, term, body);
    }

    /// As `send`, with an explicit term (pre-vote traffic uses term + 1).
    pub(super) fn send_with_term(&mut self, to: u64, term: u64, body: Body) {
        let needs_durable = match &body {
            // A leader may send entries before its own fsync (it counts
            // itself only once durable); pre-votes change no state.
            Body::AppendEntries(_) | Body::InstallSnapshot(_) => false,
            Body::RequestVote(rv) => !rv.pre_vote,
            Body::RequestVoteResponse(r) => !r.pre_vote,
            // An acknowledgement waits for the entries it claims to be
            // durable; one that claims only what is durable already (a
            // heartbeat's answer), or a rejection, goes at once, so a slow
            // disk never delays heartbeats (a term not yet durable promises
            // nothing the leader relies on).
            Body::AppendEntriesResponse(r) => r.success && r.match_index > self.log.persisted(),
            // The last chunk's answer says the snapshot is installed.
            Body::InstallSnapshotResponse(r) => r.done,
            // These promise nothing about this node's storage.
            Body::StatusQuery(_)
            | Body::StatusReply(_)
            | Body::RepairRequest(_)
            | Body::TimeoutNow(_) => false,
        };
        let m = Message {
            from: self.cfg.id,
            to,
            term,
            body: Some(body),
        };
        if needs_durable {
            self.persisted_msgs.push(m);
        } else {
            self.msgs.push(m);
        }
    }

    /// Becomes a follower in `term` (never lower than the current one).
    pub(super) fn become_follower(&mut self, term: u64, leader: Option<u64>) {
        assert!(
            term >= self.term,
            "terms never go back ({} -> {term})",
            self.term
        );
        if term > self.term {
            self.term = term;
            self.vote = 0;
        }
        if self.role == Role::Leader {
            self.reads.fail_all();
            tracing::info!(node = self.cfg.id, term = self.term, "leader stepping down");
        }
        self.role = Role::Follower;
        self.leader = leader;
        self.transfer = None;
        self.votes.clear();
        self.progress.clear();
        self.needs_broadcast = false;
        self.reset_election_timer();
    }

    /// Restarts the election timer with a fresh random timeout.
    pub(super) fn reset_election_timer(&mut self) {
        self.election_elapsed = 0;
        self.randomized_election_ticks =
            self.cfg.election_ticks + self.rng.random_range(0..self.cfg.election_ticks);
    }

    /// True if anything waits for `ready()`.
    pub fn has_ready(&self) -> bool {
        !self.msgs.is_empty()
            || !self.persisted_msgs.is_empty()
            || self.needs_broadcast
            || self.reads.has_output()
            || self.log.has_unstable()
            || self.log.has_committed()
            || self.snapshot_to_install.is_some()
            || !self.snapshot_chunks_out.is_empty()
            || !self.snapshot_chunks_in.is_empty()
            || self.soft_state() != self.last_soft
            || self.hard_state() != self.last_hard
            || self.force_hard_state
    }

    fn soft_state(&self) -> SoftState {
        SoftState {
            role: self.role,
            term: self.term,
            leader: self.leader,
            standing: self.st.standing,
        }
    }

    fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.committed(),
            // A discovering node writes nothing until it has decided.
            recovering: self.st.standing == super::Standing::Recovering,
            repair_floor: self.st.repair_floor,
        }
    }

    /// Collects everything produced since the last call. See `ready.rs` for
    /// how the driver must handle it.
    pub fn ready(&mut self) -> Ready {
        if self.role == Role::Leader {
            if self.reads.needs_round() {
                let round = self.start_round();
                self.broadcast_heartbeat(round);
            }
            if self.needs_broadcast {
                self.needs_broadcast = false;
                self.broadcast_append();
            }
        }
        let soft = self.soft_state();
        let hard = self.hard_state();
        let soft_state = (soft != self.last_soft).then_some(soft);
        let hard_state = (hard != self.last_hard || self.force_hard_state).then_some(hard);
        self.force_hard_state = false;
        self.last_soft = soft;
        self.last_hard = hard;
        let (read_states, failed_reads): (Vec<ReadState>, Vec<u64>) = self.reads.take_output();
        Ready {
            soft_state,
            hard_state,
            snapshot: self.snapshot_to_install.take(),
            entries: self.log.take_unstable(),
            messages: std::mem::take(&mut self.msgs),
            persisted_messages: std::mem::take(&mut self.persisted_msgs),
            committed_entries: self.log.take_committed(self.cfg.max_apply_bytes),
            read_states,
            failed_reads,
            snapshot_chunks_out: std::mem::take(&mut self.snapshot_chunks_out),
            snapshot_chunks_in: std::mem::take(&mut self.snapshot_chunks_in),
        }
    }
}
