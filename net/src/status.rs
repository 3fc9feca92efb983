//! What a node says about itself: role, term, leader, log indexes, storage
//! and uptime. The core task and the storage task publish to a shared
//! board after each step; STATUS requests, `/status`, `/health` and
//! `/metrics` read it without a round trip through the core, so a node
//! whose core is busy or whose disk failed still answers.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use kv_engine::raft::{Role, Standing};
use kv_proto::client as pb;
use tokio::time::Instant;

/// How recently a leader must have heard from a majority to call itself
/// healthy, when the caller does not say (a few election timeouts at the
/// default timing).
pub const QUORUM_WINDOW_DEFAULT: Duration = Duration::from_millis(1000);

/// One node's view of itself at a moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    /// Its id.
    pub id: u64,
    /// Its client address.
    pub client_addr: SocketAddr,
    /// Leader, follower or candidate.
    pub role: Role,
    /// Voter, or recovering / discovering after storage damage.
    pub standing: Standing,
    /// Current term.
    pub term: u64,
    /// The leader it follows, if it knows one.
    pub leader: Option<u64>,
    /// Last log index.
    pub last_index: u64,
    /// Commit index.
    pub commit: u64,
    /// Applied index.
    pub applied: u64,
    /// Index of its latest snapshot (0: none).
    pub snapshot_index: u64,
    /// Bytes in its WAL segments.
    pub wal_bytes: u64,
    /// Time since the process started the node.
    pub uptime: Duration,
    /// False while its disk has failed (it takes no part until it works).
    pub disk_ok: bool,
    /// For a leader: time since a majority last answered it.
    pub quorum_contact: Option<Duration>,
    /// Client connections open.
    pub connections: u64,
    /// Keys in the state machine as applied here.
    pub keys: u64,
    /// Every member's id and client address.
    pub members: Vec<(u64, SocketAddr)>,
    /// The software version.
    pub version: &'static str,
    /// `index` (ReadIndex) or `lease`.
    pub read_mode: &'static str,
}

impl NodeStatus {
    /// Whether this node can serve: it knows a leader, it is a voter with a
    /// working disk, and, if it leads, a majority answered within
    /// `quorum_window`. The reason is given when it cannot.
    pub fn health(&self, quorum_window: Duration) -> Result<(), &'static str> {
        if !self.disk_ok {
            return Err("disk failed");
        }
        if self.standing != Standing::Voter {
            return Err("recovering: waiting for a leader to repair its storage");
        }
        if self.leader.is_none() {
            return Err("no leader");
        }
        if self.role == Role::Leader && self.quorum_contact.is_none_or(|d| d > quorum_window) {
            return Err("leader without a quorum");
        }
        Ok(())
    }

    /// Every field as `(name, value)` text, in a fixed order (the text
    /// protocol's STATUS line and `/status`); values hold no spaces.
    pub fn fields(&self) -> Vec<(String, String)> {
        proto_fields(&self.to_proto())
    }

    /// This status as the binary protocol carries it.
    pub fn to_proto(&self) -> pb::NodeStatus {
        pb::NodeStatus {
            id: self.id,
            client_addr: self.client_addr.to_string(),
            role: self.role_name().into(),
            standing: self.standing_name().into(),
            term: self.term,
            leader: self.leader.unwrap_or(0),
            last_index: self.last_index,
            commit: self.commit,
            applied: self.applied,
            snapshot_index: self.snapshot_index,
            wal_bytes: self.wal_bytes,
            uptime_ms: self.uptime.as_millis().min(u64::MAX as u128) as u64,
            disk_ok: self.disk_ok,
            version: self.version.into(),
            read_mode: self.read_mode.into(),
            members: self
                .members
                .iter()
                .map(|&(id, addr)| pb::Member {
                    id,
                    client_addr: addr.to_string(),
                })
                .collect(),
            unhealthy: self
                .health(QUORUM_WINDOW_DEFAULT)
                .err()
                .unwrap_or_default()
                .into(),
        }
    }

    /// The role as operators read it.
    pub fn role_name(&self) -> &'static str {
        match self.role {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::PreCandidate => "pre-candidate",
        }
    }

    /// The standing as operators read it.
    pub fn standing_name(&self) -> &'static str {
        match self.standing {
            Standing::Voter => "voter",
            Standing::Recovering => "recovering",
            Standing::Discovering => "discovering",
        }
    }
}

/// The board a node's tasks publish their status to.
#[derive(Debug)]
pub struct StatusBoard {
    started: Instant,
    status: Mutex<NodeStatus>,
}

impl StatusBoard {
    /// A board for a node that has not recovered its storage yet.
    pub fn new(
        id: u64,
        client_addr: SocketAddr,
        members: Vec<(u64, SocketAddr)>,
        read_mode: &'static str,
    ) -> Arc<Self> {
        Arc::new(StatusBoard {
            started: Instant::now(),
            status: Mutex::new(NodeStatus {
                id,
                client_addr,
                role: Role::Follower,
                standing: Standing::Discovering,
                term: 0,
                leader: None,
                last_index: 0,
                commit: 0,
                applied: 0,
                snapshot_index: 0,
                wal_bytes: 0,
                uptime: Duration::ZERO,
                disk_ok: true,
                quorum_contact: None,
                connections: 0,
                keys: 0,
                members,
                version: env!("CARGO_PKG_VERSION"),
                read_mode,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, NodeStatus> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The status now.
    pub fn snapshot(&self) -> NodeStatus {
        let mut s = self.lock().clone();
        s.uptime = self.started.elapsed();
        s
    }

    /// Changes the published status.
    pub(crate) fn update(&self, f: impl FnOnce(&mut NodeStatus)) {
        f(&mut self.lock());
    }
}

/// A status's fields as `(name, value)` text, in the order `kv-cli status`
/// and the text protocol's STATUS line show them; values hold no spaces.
pub fn proto_fields(s: &pb::NodeStatus) -> Vec<(String, String)> {
    let members = s
        .members
        .iter()
        .map(|m| format!("{}@{}", m.id, m.client_addr))
        .collect::<Vec<_>>()
        .join(",");
    let health = match s.unhealthy.as_str() {
        "" => "ok".to_string(),
        why => why.replace(' ', "_"),
    };
    [
        ("id", s.id.to_string()),
        ("client_addr", s.client_addr.clone()),
        ("role", s.role.clone()),
        ("standing", s.standing.clone()),
        ("term", s.term.to_string()),
        ("leader", s.leader.to_string()),
        ("last_index", s.last_index.to_string()),
        ("commit", s.commit.to_string()),
        ("applied", s.applied.to_string()),
        ("snapshot_index", s.snapshot_index.to_string()),
        ("wal_bytes", s.wal_bytes.to_string()),
        ("uptime_ms", s.uptime_ms.to_string()),
        ("disk_ok", s.disk_ok.to_string()),
        ("version", s.version.clone()),
        ("read_mode", s.read_mode.clone()),
        ("health", health),
        ("members", members),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}
