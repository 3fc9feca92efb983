//! Events a node reports about its consensus state, for checkers outside
//! it (the simulation's invariant checker). Off unless a sink is configured.

use std::fmt;
use std::sync::Arc;

use kv_engine::raft::{RaftLog, Role, Standing};

/// Something a node did that a checker can verify against other nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEvent {
    /// The node (re)started from its storage.
    Started {
        /// Node id.
        node: u64,
        /// Term recovered.
        term: u64,
        /// Commit index recovered.
        commit: u64,
        /// Index of the snapshot it restored its state machine from (0: none).
        snapshot_index: u64,
        /// Whether it starts as a voter (its storage intact).
        standing: Standing,
    },
    /// Its role, term or leader changed.
    Role {
        /// Node id.
        node: u64,
        /// Current term.
        term: u64,
        /// New role.
        role: Role,
        /// Leader it follows, if known.
        leader: Option<u64>,
        /// Whether it votes and counts toward quorums.
        standing: Standing,
    },
    /// It became leader; `term_runs` describes its whole log at that moment.
    BecameLeader {
        /// Node id.
        node: u64,
        /// The term it leads.
        term: u64,
        /// Entries before this index were compacted into a snapshot.
        first_index: u64,
        /// Its last log index.
        last_index: u64,
        /// `(first index, term)` of each run of equal terms, in order.
        term_runs: Vec<(u64, u64)>,
    },
    /// Its commit index moved.
    Commit {
        /// Node id.
        node: u64,
        /// New commit index.
        commit: u64,
    },
    /// It applied a committed entry.
    Applied {
        /// Node id.
        node: u64,
        /// Log index.
        index: u64,
        /// Entry term.
        term: u64,
        /// Hash of the entry's data.
        data_hash: u64,
        /// Digest of the whole state machine after this entry (only when
        /// digests are on: it costs a pass over the map).
        digest: Option<u64>,
    },
    /// A snapshot it took is durable.
    SnapshotSaved {
        /// Node id.
        node: u64,
        /// Snapshot index.
        index: u64,
        /// Bytes of state written.
        bytes: u64,
        /// Time from capture to durable, in milliseconds.
        millis: u64,
    },
    /// It handed the transport a message that promises something durable
    /// (a vote, an acknowledgement of entries, a snapshot installed): a
    /// moment a crash must cost nothing (the simulation kills nodes here).
    Promised {
        /// Node id.
        node: u64,
        /// What it promised.
        what: &'static str,
    },
    /// It replaced its state with a snapshot.
    InstalledSnapshot {
        /// Node id.
        node: u64,
        /// Snapshot index.
        index: u64,
        /// Digest of the state machine restored.
        digest: u64,
    },
}

/// Where a node's events go.
pub trait EventSink: Send + Sync + 'static {
    /// Records one event. Must not block.
    fn emit(&self, event: NodeEvent);
}

/// A shared, optional sink, as carried by the node's configuration.
#[derive(Clone, Default)]
pub struct Events(pub Option<Arc<dyn EventSink>>);

impl Events {
    /// Records `make()` if a sink is configured (the event is built only then).
    pub fn emit(&self, make: impl FnOnce() -> NodeEvent) {
        if let Some(sink) = &self.0 {
            sink.emit(make());
        }
    }

    /// True if a sink is configured.
    pub fn enabled(&self) -> bool {
        self.0.is_some()
    }
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Events(on)"
        } else {
            "Events(off)"
        })
    }
}

/// What `m` promises about its sender's storage, if anything: a vote, an
/// acknowledgement of entries, or a snapshot installed.
pub fn durable_promise(m: &kv_proto::raft::Message) -> Option<&'static str> {
    use kv_proto::raft::message::Body;
    match m.body.as_ref()? {
        Body::RequestVoteResponse(r) if r.granted && !r.pre_vote => Some("vote"),
        Body::AppendEntriesResponse(r) if r.success => Some("append acknowledgement"),
        Body::InstallSnapshotResponse(r) if r.done => Some("snapshot installed"),
        _ => None,
    }
}

/// `(first index, term)` runs of a log, for leader-completeness checks.
pub fn term_runs(log: &RaftLog) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for index in log.first_index()..=log.last_index() {
        let Some(term) = log.term(index) else {
            continue;
        };
        if runs.last().is_none_or(|&(_, t)| t != term) {
            runs.push((index, term));
        }
    }
    runs
}

/// FNV-1a: a stable, dependency-free hash for entry payloads.
pub fn fnv1a(data: &[u8]) -> u64 {
    let mut h = 0xcbf29ce484222325u64;
    for &b in data {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}
