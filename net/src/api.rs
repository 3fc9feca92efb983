//! What clients ask of a node and what it answers: the operations, the
//! replies, and the handle through which the client listener (and the HTTP
//! endpoint) submit them. The node's core task and the client listener both
//! depend on this module, not on each other.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;
use crate::status::{NodeStatus, StatusBoard};

/// A client operation handed to the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOp {
    /// Linearizable read of one key.
    Get {
        /// The key.
        key: Bytes,
    },
    /// Write `value` at `key`.
    Set {
        /// The key.
        key: Bytes,
        /// The value.
        value: Bytes,
    },
    /// Delete `key`.
    Del {
        /// The key.
        key: Bytes,
    },
    /// Write every pair, atomically.
    MSet {
        /// The keys and values, in order (a later pair for a key wins).
        pairs: Vec<(Bytes, Bytes)>,
    },
    /// Write `new` at `key` only if it holds `expected`.
    Cas {
        /// The key.
        key: Bytes,
        /// The value the key must hold.
        expected: Bytes,
        /// The value to write.
        new: Bytes,
    },
    /// SET with Redis's options: only if absent or present, and answering
    /// the value replaced.
    SetIf {
        /// The key.
        key: Bytes,
        /// The value.
        value: Bytes,
        /// When to write.
        condition: SetCondition,
        /// Answer the value replaced (`ClientReply::Old`).
        return_old: bool,
    },
    /// Add `by` to the integer at `key` (absent: 0).
    Incr {
        /// The key.
        key: Bytes,
        /// The amount (negative: decrement).
        by: i64,
    },
    /// Append `value` to the value at `key`.
    Append {
        /// The key.
        key: Bytes,
        /// What to append.
        value: Bytes,
    },
    /// Delete every key; answers how many existed.
    DelMany {
        /// The keys.
        keys: Vec<Bytes>,
    },
    /// Write every pair only if no key exists (1 if written, 0 if not).
    MSetNx {
        /// The pairs.
        pairs: Vec<(Bytes, Bytes)>,
    },
    /// Delete every key (replicated).
    Flush,
    /// Open an exactly-once session; answers its id.
    OpenSession,
    /// Linearizable read of several keys.
    MGet {
        /// The keys.
        keys: Vec<Bytes>,
    },
    /// How many of the keys exist (a key given twice counts twice).
    Exists {
        /// The keys.
        keys: Vec<Bytes>,
    },
    /// The length of the value at `key` (0 if absent).
    StrLen {
        /// The key.
        key: Bytes,
    },
    /// Number of keys.
    DbSize,
    /// A page of keys in key order from `from` (see `KvStore::scan`).
    Scan {
        /// The first key to look at (empty: the start).
        from: Bytes,
        /// Only keys matching this glob.
        pattern: Option<Bytes>,
        /// About how many keys.
        count: usize,
    },
    /// Every key matching a glob (refused beyond `MAX_KEYS_ANSWERED`).
    Keys {
        /// The glob.
        pattern: Bytes,
    },
    /// This node's status (answered by the node itself, leader or not).
    Status,
    /// Hand leadership to `to`, or to the most up-to-date member; answered
    /// once another member leads.
    TransferLeader {
        /// The member to lead next (None: the node chooses).
        to: Option<u64>,
    },
}

/// When `ClientOp::SetIf` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetCondition {
    /// Always (plain SET).
    Always,
    /// Only if the key is absent (NX).
    IfAbsent,
    /// Only if the key is present (XX).
    IfPresent,
}

/// KEYS answers at most this many keys; a larger answer is refused (use
/// SCAN), so one request cannot make the node build an unbounded reply.
pub const MAX_KEYS_ANSWERED: usize = 10_000;

/// An MSET or MSETNX holds at most this many pairs in any protocol (as
/// many as a Redis command of 65,536 arguments): a pair costs far more in
/// memory than on the wire (two empty fields take two bytes in a binary
/// frame), so the count is bounded, not only the bytes.
pub const MAX_MSET_PAIRS: usize = 32_768;

impl ClientOp {
    /// The operation's name, for metrics.
    pub fn name(&self) -> &'static str {
        match self {
            ClientOp::Get { .. } => "get",
            ClientOp::Set { .. } => "set",
            ClientOp::Del { .. } => "del",
            ClientOp::MSet { .. } => "mset",
            ClientOp::Cas { .. } => "cas",
            ClientOp::SetIf { .. } => "set_if",
            ClientOp::Incr { .. } => "incr",
            ClientOp::Append { .. } => "append",
            ClientOp::DelMany { .. } => "del_many",
            ClientOp::MSetNx { .. } => "msetnx",
            ClientOp::Flush => "flush",
            ClientOp::OpenSession => "open_session",
            ClientOp::MGet { .. } => "mget",
            ClientOp::Exists { .. } => "exists",
            ClientOp::StrLen { .. } => "strlen",
            ClientOp::DbSize => "dbsize",
            ClientOp::Scan { .. } => "scan",
            ClientOp::Keys { .. } => "keys",
            ClientOp::Status => "status",
            ClientOp::TransferLeader { .. } => "transfer_leader",
        }
    }

    /// The keys the operation touches (none for whole-store operations).
    pub fn keys(&self) -> Vec<&Bytes> {
        match self {
            ClientOp::Get { key }
            | ClientOp::Set { key, .. }
            | ClientOp::Del { key }
            | ClientOp::Cas { key, .. }
            | ClientOp::SetIf { key, .. }
            | ClientOp::Incr { key, .. }
            | ClientOp::Append { key, .. }
            | ClientOp::StrLen { key } => vec![key],
            ClientOp::MSet { pairs } | ClientOp::MSetNx { pairs } => {
                pairs.iter().map(|(k, _)| k).collect()
            }
            ClientOp::DelMany { keys } | ClientOp::MGet { keys } | ClientOp::Exists { keys } => {
                keys.iter().collect()
            }
            ClientOp::Flush
            | ClientOp::OpenSession
            | ClientOp::DbSize
            | ClientOp::Scan { .. }
            | ClientOp::Keys { .. }
            | ClientOp::Status
            | ClientOp::TransferLeader { .. } => Vec::new(),
        }
    }

    /// Whether it only reads (served by ReadIndex or a lease, never logged).
    pub fn is_read(&self) -> bool {
        matches!(
            self,
            ClientOp::Get { .. }
                | ClientOp::MGet { .. }
                | ClientOp::Exists { .. }
                | ClientOp::StrLen { .. }
                | ClientOp::DbSize
                | ClientOp::Scan { .. }
                | ClientOp::Keys { .. }
        )
    }
}

/// A write's place in an exactly-once session (Raft thesis §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionTag {
    /// The session's id.
    pub session: u64,
    /// The write's sequence number in it (from 1).
    pub seq: u64,
    /// The client has every answer below this sequence number.
    pub acked_below: u64,
}

/// How the node answered a client operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientReply {
    /// SET, or a DEL or CAS that took effect.
    Ok,
    /// GET found a value.
    Value(Bytes),
    /// GET or DEL found no value.
    NotFound,
    /// CAS did not match; the current value (None: absent).
    CasFailed(Option<Bytes>),
    /// This node is not the leader; the leader's client address.
    Redirect(SocketAddr),
    /// No leader is known right now; retry later.
    NoLeader,
    /// The operation failed; the kind says whether it may have happened.
    Failed(FailKind),
    /// The node's status.
    Status(Box<NodeStatus>),
    /// The request could not be done and changed nothing (a leadership
    /// transfer to no member, INCR of a value that is not an integer, a
    /// write in a session that is gone).
    Refused(String),
    /// A number (INCR, APPEND's length, DEL's count, MSETNX, EXISTS,
    /// STRLEN, DBSIZE).
    Int(i64),
    /// SET ... GET: the value replaced (None: none).
    Old(Option<Bytes>),
    /// SET NX / XX whose condition did not hold.
    NotSet,
    /// MGET: each key's value (None: absent).
    Values(Vec<Option<Bytes>>),
    /// SCAN: the key to go on from (None: done) and a page of keys.
    Page {
        /// Where the next page starts.
        next: Option<Bytes>,
        /// The keys.
        keys: Vec<Bytes>,
    },
    /// KEYS: the keys matching.
    Keys(Vec<Bytes>),
    /// A session was opened: its id.
    Session(u64),
}

/// Why an operation failed, and whether a retry is safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailKind {
    /// It surely did not happen (never appended, or its entry was
    /// overwritten, or a read was not confirmed): a retry is safe.
    NotApplied,
    /// It was appended, then leadership was lost: it may or may not happen.
    Unknown,
    /// The node is overloaded; it did not happen.
    Overloaded,
    /// No answer in time: it may or may not have happened.
    Timeout,
    /// The node is stopping; it may or may not have happened.
    ShuttingDown,
    /// This node cannot serve now (its disk failed); it did not happen.
    Unavailable,
}

impl FailKind {
    /// Every kind.
    pub const ALL: [FailKind; 6] = [
        FailKind::NotApplied,
        FailKind::Unknown,
        FailKind::Overloaded,
        FailKind::Timeout,
        FailKind::ShuttingDown,
        FailKind::Unavailable,
    ];

    /// What a client is told (both protocols; its first words say whether
    /// a retry is safe, see `client::retry`).
    pub fn message(self) -> &'static str {
        match self {
            FailKind::NotApplied => "not applied: leader changed, safe to retry",
            FailKind::Unknown => "outcome unknown: leadership lost",
            FailKind::Overloaded => "overloaded, retry later",
            FailKind::Timeout => "timeout: outcome unknown",
            FailKind::ShuttingDown => "shutting down: outcome unknown",
            FailKind::Unavailable => "unavailable: this node's disk failed; retry on another node",
        }
    }
}

/// A client operation with the channel its reply goes to.
#[derive(Debug)]
pub struct ClientRequest {
    /// What to do.
    pub op: ClientOp,
    /// Its place in a session, for a write (exactly once).
    pub session: Option<SessionTag>,
    /// Where the answer goes.
    pub reply: oneshot::Sender<ClientReply>,
}

/// An operation handed to the node, its answer to come.
#[derive(Debug)]
pub enum Submitted {
    /// Answered already (STATUS, or the node was not taking requests).
    Ready(ClientReply),
    /// In the core; the answer comes on `rx`.
    Waiting {
        /// The answer.
        rx: oneshot::Receiver<ClientReply>,
        /// The operation's name and start, for the latency metric.
        timed: Option<(&'static str, tokio::time::Instant, Arc<Metrics>)>,
    },
}

impl Submitted {
    /// The answer if the node gave it already; otherwise itself, to wait on.
    pub fn try_reply(self) -> Result<ClientReply, Submitted> {
        match self {
            Submitted::Ready(reply) => Ok(reply),
            Submitted::Waiting { mut rx, timed } => match rx.try_recv() {
                Ok(reply) => {
                    if let Some((name, started, metrics)) = timed {
                        metrics.client_request(name, started.elapsed());
                    }
                    Ok(reply)
                }
                Err(oneshot::error::TryRecvError::Empty) => Err(Submitted::Waiting { rx, timed }),
                Err(oneshot::error::TryRecvError::Closed) => {
                    Ok(ClientReply::Failed(FailKind::ShuttingDown))
                }
            },
        }
    }

    /// The answer, once the node gives it.
    pub async fn reply(self) -> ClientReply {
        match self {
            Submitted::Ready(reply) => reply,
            Submitted::Waiting { rx, timed } => {
                let reply = rx
                    .await
                    .unwrap_or(ClientReply::Failed(FailKind::ShuttingDown));
                if let Some((name, started, metrics)) = timed {
                    metrics.client_request(name, started.elapsed());
                }
                reply
            }
        }
    }
}

/// A cheap handle through which client connections reach the node's core.
#[derive(Debug, Clone)]
pub struct NodeHandle {
    requests: mpsc::Sender<ClientRequest>,
    board: Arc<StatusBoard>,
    metrics: Arc<Metrics>,
}

impl NodeHandle {
    /// A handle submitting to the core task through `requests`.
    pub(crate) fn new(
        requests: mpsc::Sender<ClientRequest>,
        board: Arc<StatusBoard>,
        metrics: Arc<Metrics>,
    ) -> Self {
        NodeHandle {
            requests,
            board,
            metrics,
        }
    }

    /// Submits `op` and waits for its answer (bounded by the caller's timeout).
    pub async fn call(&self, op: ClientOp) -> ClientReply {
        self.call_in(op, None).await
    }

    /// As `call`, for a write in a session (exactly once).
    pub async fn call_in(&self, op: ClientOp, session: Option<SessionTag>) -> ClientReply {
        if op == ClientOp::Status {
            return ClientReply::Status(Box::new(self.status()));
        }
        let (name, started) = (op.name(), tokio::time::Instant::now());
        let reply = self.call_core(op, session).await;
        self.metrics.client_request(name, started.elapsed());
        reply
    }

    async fn call_core(&self, op: ClientOp, session: Option<SessionTag>) -> ClientReply {
        self.submit_core(op, session).await.reply().await
    }

    /// Hands `op` to the node now and returns what will carry its answer:
    /// operations submitted one after another reach the core in that order
    /// (writes are proposed in it), however their answers are awaited.
    pub async fn submit(&self, op: ClientOp) -> Submitted {
        self.submit_in(op, None).await
    }

    /// As `submit`, for a write in a session (exactly once).
    pub async fn submit_in(&self, op: ClientOp, session: Option<SessionTag>) -> Submitted {
        if op == ClientOp::Status {
            return Submitted::Ready(ClientReply::Status(Box::new(self.status())));
        }
        let (name, started) = (op.name(), tokio::time::Instant::now());
        match self.submit_core(op, session).await {
            Submitted::Waiting { rx, .. } => Submitted::Waiting {
                rx,
                timed: Some((name, started, self.metrics.clone())),
            },
            ready => ready,
        }
    }

    async fn submit_core(&self, op: ClientOp, session: Option<SessionTag>) -> Submitted {
        let (reply, rx) = oneshot::channel();
        if self
            .requests
            .send(ClientRequest { op, session, reply })
            .await
            .is_err()
        {
            // The core stopped taking requests: this one never reached it.
            return Submitted::Ready(ClientReply::Failed(FailKind::Unavailable));
        }
        Submitted::Waiting { rx, timed: None }
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Counts a client connection opened (true) or closed (false).
    pub(crate) fn connection_opened(&self, opened: bool) {
        self.board.update(|s| {
            s.connections = if opened {
                s.connections + 1
            } else {
                s.connections.saturating_sub(1)
            }
        });
    }

    /// The node's status now (no round trip through the core).
    pub fn status(&self) -> NodeStatus {
        self.board.snapshot()
    }
}
