//! What the core hands back to its driver, and the few rules for handling it.
//!
//! The driver loop is:
//!
//! 1. feed inputs (`tick`, `step`, `propose`, `read_index`);
//! 2. `let rd = core.ready()`;
//! 3. send `rd.messages` now;
//! 4. persist `rd.snapshot` (a marker: the snapshot's file is already
//!    durable), then `rd.hard_state` and `rd.entries` (the first entry's
//!    index says where the log is cut: anything stored at or after it is
//!    replaced), in one write and one fsync;
//! 5. once that write *and every earlier Ready's write* are durable, send
//!    `rd.persisted_messages` and call `core.on_persisted(index, term)` with
//!    `rd.persist_point()`;
//! 6. apply `rd.committed_entries` in order; serve `rd.read_states` once the
//!    applied index reaches their index;
//! 7. snapshots stream outside the Ready's write: for each of
//!    `rd.snapshot_chunks_out`, read that range of the local snapshot's data
//!    and send it (`SnapshotChunkOut::message`); append each of
//!    `rd.snapshot_chunks_in` to the snapshot being received and call
//!    `core.on_snapshot_chunk_written`; once one is `done`, make the snapshot
//!    durable, rebuild the state machine from it and call
//!    `core.on_snapshot_received`.
//!
//! Inputs may keep arriving between 2 and 5: the core never assumes a write
//! is durable until told.

use bytes::Bytes;
use kv_proto::raft::{message::Body, Entry, HardState, InstallSnapshot, Message, SnapshotMeta};

/// The role a node plays in its current term.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Asks for pre-votes without raising its term (thesis §9.6).
    PreCandidate,
    /// Asks for votes in a new term (§5.2).
    Candidate,
    /// Replicates its log to the others (§5.3).
    Leader,
}

/// Volatile state worth reporting when it changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SoftState {
    /// Current role.
    pub role: Role,
    /// Current term.
    pub term: u64,
    /// The leader of the current term, if known.
    pub leader: Option<u64>,
    /// Whether this node votes (see `standing.rs`).
    pub standing: super::Standing,
}

/// A linearizable read that may be served once the state machine has
/// applied up to `index` (ReadIndex, thesis §6.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadState {
    /// The id the driver gave the read.
    pub id: u64,
    /// Commit index at the time the read was confirmed.
    pub index: u64,
}

/// Why a proposal or read was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// Only the leader takes proposals and reads; here is the one we know.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader of the current term, if known.
        leader: Option<u64>,
    },
    /// Too many entries wait to be committed; try again later.
    #[error("too many uncommitted entries")]
    Overloaded,
    /// Empty data is reserved for the leader's no-op entry.
    #[error("empty proposal")]
    Empty,
    /// No voter can take leadership over (none named, or the one named is
    /// not a voter).
    #[error("no member to hand leadership to")]
    NoTransferTarget,
    /// Leadership is being handed over: proposals wait for the next
    /// leader (nothing was appended; a retry is safe).
    #[error("leadership transfer in progress")]
    Transferring,
}

/// Where a proposal was placed; it succeeded if the entry applied at
/// `index` has this `term`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proposed {
    /// Log index of the new entry.
    pub index: u64,
    /// Term of the new entry.
    pub term: u64,
}

/// A snapshot this node holds on disk: where it ends and how many bytes of
/// data it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The last entry it covers.
    pub meta: SnapshotMeta,
    /// Bytes of its data (the state machine's encoding).
    pub size: u64,
}

/// A chunk of the local snapshot to send: the runtime reads `len` bytes of
/// its data at `offset` and sends them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotChunkOut {
    /// The follower.
    pub to: u64,
    /// The sender's id and term, for the message.
    pub from: u64,
    /// The term the message is sent in.
    pub term: u64,
    /// Which snapshot.
    pub meta: SnapshotMeta,
    /// Where in its data.
    pub offset: u64,
    /// How many bytes.
    pub len: u64,
    /// This is the last chunk.
    pub done: bool,
    /// The read round the message carries.
    pub round: u64,
}

impl SnapshotChunkOut {
    /// The message carrying `data` (the `len` bytes at `offset`).
    pub fn message(&self, data: Bytes) -> Message {
        debug_assert_eq!(data.len() as u64, self.len, "a chunk is what was asked for");
        Message {
            from: self.from,
            to: self.to,
            term: self.term,
            body: Some(Body::InstallSnapshot(InstallSnapshot {
                meta: Some(self.meta),
                offset: self.offset,
                data,
                done: self.done,
                round: self.round,
            })),
        }
    }
}

/// A chunk of a snapshot being received from the leader, to append to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotChunkIn {
    /// Which snapshot.
    pub meta: SnapshotMeta,
    /// Where in its data (chunks come in order, without gaps).
    pub offset: u64,
    /// The bytes.
    pub data: Bytes,
    /// This is the last chunk: make the snapshot durable, rebuild the state
    /// machine from it, then call `RaftCore::on_snapshot_received`. Any
    /// other chunk: once written, call `RaftCore::on_snapshot_chunk_written`.
    pub done: bool,
}

/// Everything the core produced since the last `ready()`.
#[derive(Debug, Default)]
pub struct Ready {
    /// The role, term or leader changed.
    pub soft_state: Option<SoftState>,
    /// Hard state to persist (changed since the last Ready).
    pub hard_state: Option<HardState>,
    /// Entries to persist; stored entries at or after `entries[0].index` are replaced.
    pub entries: Vec<Entry>,
    /// A snapshot received from the leader and already durable: record in
    /// the log that the log now starts after it (replacing the whole log).
    pub snapshot: Option<SnapshotMeta>,
    /// Messages that may be sent at once.
    pub messages: Vec<Message>,
    /// Messages that may be sent only after this Ready's writes are durable.
    pub persisted_messages: Vec<Message>,
    /// Committed entries to apply, in order.
    pub committed_entries: Vec<Entry>,
    /// Reads confirmed by a quorum.
    pub read_states: Vec<ReadState>,
    /// Reads that can no longer be confirmed (leadership lost): answer them
    /// with an error; retrying elsewhere is safe.
    pub failed_reads: Vec<u64>,
    /// Chunks of the local snapshot to read and send.
    pub snapshot_chunks_out: Vec<SnapshotChunkOut>,
    /// Chunks of a snapshot being received, to append to it.
    pub snapshot_chunks_in: Vec<SnapshotChunkIn>,
}

impl Ready {
    /// Whether this Ready writes anything that must be synced.
    pub fn must_persist(&self) -> bool {
        self.hard_state.is_some() || !self.entries.is_empty() || self.snapshot.is_some()
    }

    /// The `(index, term)` to report through `on_persisted` once durable.
    pub fn persist_point(&self) -> Option<(u64, u64)> {
        if let Some(last) = self.entries.last() {
            return Some((last.index, last.term));
        }
        self.snapshot.map(|m| (m.index, m.term))
    }

    /// True if there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.soft_state.is_none()
            && !self.must_persist()
            && self.messages.is_empty()
            && self.persisted_messages.is_empty()
            && self.committed_entries.is_empty()
            && self.read_states.is_empty()
            && self.failed_reads.is_empty()
            && self.snapshot_chunks_out.is_empty()
            && self.snapshot_chunks_in.is_empty()
    }
}
