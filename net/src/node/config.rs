//! A node's configuration: who it is, who its peers are, where its data
//! lives, its timing and its limits.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use kv_engine::raft::{Config as RaftConfig, ReadMode};
use kv_engine::storage::meta::DataDirMeta;

use super::events::Events;
use crate::limits::{ClientLimits, TextLimits};
use crate::storage::StorageOptions;
use crate::transport::{NetFaults, TransportConfig};

/// One member of the cluster: where its peers and its clients reach it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// Address of its peer (Raft) port.
    pub peer_addr: SocketAddr,
    /// Address of its client port (what REDIRECT names).
    pub client_addr: SocketAddr,
}

/// Everything one node needs to run.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's id (non-zero, a key of `members`).
    pub id: u64,
    /// Frames from another cluster id are refused.
    pub cluster_id: u64,
    /// All members, this node included. Fixed for the cluster's life.
    pub members: BTreeMap<u64, Member>,
    /// Where the WAL and snapshots live.
    pub data_dir: PathBuf,
    /// Length of one logical tick of the Raft core.
    pub tick: Duration,
    /// Election timeout, in ticks (randomised up to twice this).
    pub election_ticks: u64,
    /// Heartbeat interval, in ticks.
    pub heartbeat_ticks: u64,
    /// Take a snapshot once this many entries were applied since the last one
    /// (each node stretches this by up to a quarter, at random).
    pub snapshot_entries: u64,
    /// ... or once this many bytes of entries were applied since the last one.
    pub snapshot_bytes: u64,
    /// WAL segment size before rotation.
    pub segment_bytes: u64,
    /// Client-side limits (line, key, value sizes; connections).
    pub client: ClientLimits,
    /// Capacity of the queue of client requests into the core.
    pub client_queue_capacity: usize,
    /// Capacity of the queue of peer messages into the core.
    pub peer_inbound_capacity: usize,
    /// Bytes that queue may hold (each message charged its frame plus its
    /// entries' in-memory size); a connection whose message does not fit
    /// waits for the core.
    pub peer_inbound_bytes: usize,
    /// Capacity of each peer's outbound queue.
    pub peer_queue_capacity: usize,
    /// Capacity of the queue of writes to the storage task.
    pub storage_queue_capacity: usize,
    /// Largest peer frame accepted.
    pub max_peer_frame_bytes: usize,
    /// Inbound peer connections held at once (strangers included until
    /// they fail the hello).
    pub max_peer_connections: usize,
    /// Bytes of entries the leader may hold proposed but not committed.
    pub max_uncommitted_bytes: u64,
    /// Bytes of appends in flight to one follower.
    pub max_inflight_bytes: u64,
    /// Mutual TLS on the peer and client ports (off: plain TCP).
    #[cfg(not(madsim))]
    pub tls: Option<crate::tls::NodeTls>,
    /// Injected network faults (simulation only; off by default).
    pub net_faults: NetFaults,
    /// Seed of the core's randomness (election timeouts).
    pub seed: u64,
    /// Where consensus events go (the simulation's checkers); off by default.
    pub events: Events,
    /// At most this many entries in one append (small values make catch-up
    /// take many steps, which the simulation uses).
    pub max_append_entries: usize,
    /// At most this many bytes of committed entries applied per step (at
    /// least one entry); small values leave a backlog between steps, which
    /// the simulation uses.
    pub max_apply_bytes: usize,
    /// Run a pre-vote round before each election (thesis §9.6); on by
    /// default. Off, a node cut off from the others raises its term at
    /// every timeout (the simulation runs both ways).
    pub pre_vote: bool,
    /// How the leader confirms its leadership before a read: ReadIndex
    /// (a heartbeat round per batch of reads) or a lease.
    pub read_mode: ReadMode,
    /// For lease reads: how far apart, in percent, members' clock rates may
    /// be (the lease is shortened by as much).
    pub max_clock_drift_percent: u64,
    /// Where to serve `/metrics`, `/health` and `/status` (None: nowhere).
    pub http_addr: Option<SocketAddr>,
    /// Simulated time between a write and its fsync (simulation only; zero
    /// by default, where the real disk's own latency applies).
    pub disk_latency_max: Duration,
    /// Simulated disk bandwidth in bytes per second, shared by the WAL and
    /// snapshots (simulation only; 0, the default: no limit).
    pub disk_bytes_per_sec: u64,
}

impl NodeConfig {
    /// A configuration with defaults for node `id` of `members`.
    pub fn new(id: u64, members: BTreeMap<u64, Member>, data_dir: PathBuf) -> Self {
        NodeConfig {
            id,
            cluster_id: 1,
            members,
            data_dir,
            tick: Duration::from_millis(10),
            election_ticks: 15,
            heartbeat_ticks: 3,
            snapshot_entries: 100_000,
            snapshot_bytes: 64 << 20,
            segment_bytes: 64 << 20,
            client: ClientLimits::default(),
            client_queue_capacity: 16_384,
            peer_inbound_capacity: 4096,
            peer_inbound_bytes: 128 << 20,
            peer_queue_capacity: 4096,
            storage_queue_capacity: 1024,
            max_peer_frame_bytes: 64 << 20,
            max_peer_connections: 64,
            max_uncommitted_bytes: 64 << 20,
            max_inflight_bytes: 8 << 20,
            #[cfg(not(madsim))]
            tls: None,
            net_faults: NetFaults::default(),
            seed: id,
            events: Events::default(),
            disk_latency_max: Duration::ZERO,
            disk_bytes_per_sec: 0,
            max_append_entries: 4096,
            max_apply_bytes: RaftConfig::new(id, Vec::new()).max_apply_bytes,
            pre_vote: true,
            read_mode: ReadMode::Index,
            max_clock_drift_percent: 10,
            http_addr: None,
        }
    }

    /// Checks what the type system cannot.
    pub fn validate(&self) -> Result<(), String> {
        if !self.members.contains_key(&self.id) {
            return Err(format!(
                "node id {} is not among the members {:?}",
                self.id,
                self.members.keys().collect::<Vec<_>>()
            ));
        }
        if self.tick.is_zero() {
            return Err("tick must be > 0".into());
        }
        if self.snapshot_entries == 0 || self.snapshot_bytes == 0 {
            return Err("snapshot_entries and snapshot_bytes must be > 0".into());
        }
        self.raft_config().validate().map_err(|e| e.to_string())
    }

    /// This node's entry in `members`.
    fn me(&self) -> Member {
        self.members[&self.id]
    }

    /// The address clients connect to.
    pub fn client_addr(&self) -> SocketAddr {
        self.me().client_addr
    }

    /// The core's configuration.
    pub fn raft_config(&self) -> RaftConfig {
        let mut cfg = RaftConfig::new(self.id, self.members.keys().copied().collect());
        cfg.election_ticks = self.election_ticks;
        cfg.heartbeat_ticks = self.heartbeat_ticks;
        cfg.seed = self.seed;
        cfg.max_append_entries = self.max_append_entries;
        cfg.max_apply_bytes = self.max_apply_bytes;
        cfg.pre_vote = self.pre_vote;
        cfg.read_mode = self.read_mode;
        cfg.max_clock_drift_percent = self.max_clock_drift_percent;
        cfg.max_uncommitted_bytes = self.max_uncommitted_bytes;
        cfg.max_inflight_bytes = self.max_inflight_bytes;
        // A slow snapshot transfer may outlast a few snapshot intervals.
        cfg.max_log_kept_for_transfer_bytes = self.snapshot_bytes.saturating_mul(4);
        // An append must fit a peer frame with room to spare.
        cfg.max_append_bytes = cfg.max_append_bytes.min(self.max_peer_frame_bytes / 4);
        cfg.snapshot_chunk_bytes = cfg.snapshot_chunk_bytes.min(self.max_peer_frame_bytes / 4);
        cfg
    }

    /// The read mode as operators name it.
    pub fn read_mode_name(&self) -> &'static str {
        match self.read_mode {
            ReadMode::Index => "index",
            ReadMode::Lease => "lease",
        }
    }

    /// The peer transport's configuration.
    pub fn transport_config(&self) -> TransportConfig {
        let peers = self
            .members
            .iter()
            .filter(|(&id, _)| id != self.id)
            .map(|(&id, m)| (id, m.peer_addr))
            .collect();
        TransportConfig {
            cluster_id: self.cluster_id,
            node_id: self.id,
            listen_addr: self.me().peer_addr,
            peers,
            queue_capacity: self.peer_queue_capacity,
            max_frame_bytes: self.max_peer_frame_bytes,
            max_inbound_connections: self.max_peer_connections,
            hello_timeout: Duration::from_secs(5),
            keepalive: Duration::from_secs(1),
            reconnect_backoff_min: Duration::from_millis(20),
            reconnect_backoff_max: Duration::from_secs(1),
            faults: self.net_faults.clone(),
            #[cfg(not(madsim))]
            tls: self.tls.clone(),
        }
    }

    /// Storage options.
    pub fn storage_options(&self) -> StorageOptions {
        StorageOptions {
            segment_size_bytes: self.segment_bytes,
            identity: DataDirMeta::new(self.cluster_id, self.id),
            ..StorageOptions::default()
        }
    }

    /// Limits of the client listener.
    pub fn client_limits(&self) -> ClientLimits {
        self.client.clone()
    }

    /// Limits of the text protocol.
    pub fn text_limits(&self) -> TextLimits {
        self.client.text.clone()
    }
}
