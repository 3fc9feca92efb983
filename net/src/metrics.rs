//! A node's metrics in Prometheus form (the `prometheus-client` crate,
//! OpenMetrics text on `/metrics`). Names follow Prometheus practice: a
//! `kv_` prefix, the unit in the name, `_total` on counters, histograms for
//! latencies. The tasks that do the work update them as they go; values
//! kept elsewhere (the status board, the transport's counters) are copied
//! in when a scrape asks.

use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::status::NodeStatus;
use crate::transport::TransportStats;

/// One label: a client operation (`get`, `set`, ...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    /// The operation.
    pub op: &'static str,
}

/// One label: why something was refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// The reason, as a short name.
    pub reason: &'static str,
}

/// One label: a peer's id.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    /// The peer.
    pub peer: String,
}

type IntGauge = Gauge<i64, AtomicI64>;

/// Every metric of one node.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Current term.
    pub term: IntGauge,
    /// 1 while this node leads.
    pub is_leader: IntGauge,
    /// Commit index.
    pub commit_index: IntGauge,
    /// Applied index.
    pub applied_index: IntGauge,
    /// Last log index.
    pub last_index: IntGauge,
    /// Times this node saw the leader change (a new leader, or none).
    pub leader_changes: Counter,
    /// Elections this node started (as candidate).
    pub elections: Counter,
    /// Proposals appended to the log as leader.
    pub proposals: Counter,
    /// Proposals refused, by reason.
    pub proposals_refused: Family<ReasonLabel, Counter>,
    /// Committed entries applied to the state machine.
    pub entries_applied: Counter,
    /// Time to apply one batch of committed entries.
    pub apply_seconds: Histogram,
    /// Time of one WAL fsync (fdatasync), batch writes included.
    pub fsync_seconds: Histogram,
    /// WAL fsyncs.
    pub fsyncs: Counter,
    /// Bytes in the WAL's segment files.
    pub wal_bytes: IntGauge,
    /// Client requests answered, by operation.
    pub client_requests: Family<OpLabel, Counter>,
    /// Time from a client request's arrival to its answer, by operation.
    pub client_seconds: Family<OpLabel, Histogram>,
    /// Client connections open.
    pub client_connections: IntGauge,
    /// Client connections refused or cut off, by reason.
    pub client_refusals: Family<ReasonLabel, Counter>,
    /// Peer messages handed to the network.
    pub peer_sent: Counter,
    /// Peer messages received and accepted.
    pub peer_received: Counter,
    /// Peer messages dropped because a peer's queue was full.
    pub peer_dropped: Counter,
    /// Peer connections or frames refused (wrong cluster, stranger, TLS).
    pub peer_refused: Counter,
    /// Messages waiting in each peer's outbound queue.
    pub peer_queue_depth: Family<PeerLabel, IntGauge>,
    /// Local snapshots made durable.
    pub snapshots: Counter,
    /// Time from capturing a snapshot to its being durable.
    pub snapshot_seconds: Histogram,
    /// Bytes of state in the latest local snapshot.
    pub snapshot_bytes: IntGauge,
    /// Snapshots installed from the leader.
    pub snapshots_installed: Counter,
    /// Transport counters as of the last scrape (they are copied in as
    /// increments).
    seen: Mutex<TransportStats>,
    /// Whether this node led at the last status update (for elections).
    last_leader: AtomicU64,
}

fn latency_histogram() -> Histogram {
    // 50 µs to about 26 s, doubling.
    Histogram::new(exponential_buckets(0.00005, 2.0, 20))
}

impl Metrics {
    /// A fresh set, registered.
    pub fn new() -> Arc<Self> {
        let mut m = Metrics {
            term: IntGauge::default(),
            is_leader: IntGauge::default(),
            commit_index: IntGauge::default(),
            applied_index: IntGauge::default(),
            last_index: IntGauge::default(),
            leader_changes: Counter::default(),
            elections: Counter::default(),
            proposals: Counter::default(),
            proposals_refused: Family::default(),
            entries_applied: Counter::default(),
            apply_seconds: latency_histogram(),
            fsync_seconds: latency_histogram(),
            fsyncs: Counter::default(),
            wal_bytes: IntGauge::default(),
            client_requests: Family::default(),
            client_seconds: Family::new_with_constructor(latency_histogram),
            client_connections: IntGauge::default(),
            client_refusals: Family::default(),
            peer_sent: Counter::default(),
            peer_received: Counter::default(),
            peer_dropped: Counter::default(),
            peer_refused: Counter::default(),
            peer_queue_depth: Family::default(),
            snapshots: Counter::default(),
            snapshot_seconds: latency_histogram(),
            snapshot_bytes: IntGauge::default(),
            snapshots_installed: Counter::default(),
            seen: Mutex::new(TransportStats::default()),
            last_leader: AtomicU64::new(0),
            registry: Registry::with_prefix("kv"),
        };
        let mut registry = std::mem::take(&mut m.registry);
        m.register(&mut registry);
        m.registry = registry;
        Arc::new(m)
    }

    fn register(&self, r: &mut Registry) {
        self.register_raft(r);
        self.register_storage(r);
        self.register_clients(r);
        self.register_peers(r);
        self.register_snapshots(r);
    }

    /// The Raft core: term, role, indexes, elections, proposals.
    fn register_raft(&self, r: &mut Registry) {
        r.register("raft_term", "Current Raft term", self.term.clone());
        r.register(
            "raft_is_leader",
            "1 while this node leads",
            self.is_leader.clone(),
        );
        r.register(
            "raft_commit_index",
            "Commit index",
            self.commit_index.clone(),
        );
        r.register(
            "raft_applied_index",
            "Applied index",
            self.applied_index.clone(),
        );
        r.register("raft_last_index", "Last log index", self.last_index.clone());
        r.register(
            "raft_leader_changes",
            "Times the leader this node follows changed",
            self.leader_changes.clone(),
        );
        r.register(
            "raft_elections",
            "Elections this node started",
            self.elections.clone(),
        );
        r.register(
            "raft_proposals",
            "Entries proposed as leader",
            self.proposals.clone(),
        );
        r.register(
            "raft_proposals_refused",
            "Proposals refused, by reason",
            self.proposals_refused.clone(),
        );
        r.register(
            "raft_entries_applied",
            "Committed entries applied",
            self.entries_applied.clone(),
        );
    }

    /// Applying and the WAL.
    fn register_storage(&self, r: &mut Registry) {
        r.register_with_unit(
            "apply_duration",
            "Time to apply a batch of committed entries",
            Unit::Seconds,
            self.apply_seconds.clone(),
        );
        r.register_with_unit(
            "wal_fsync_duration",
            "Time of one WAL write and fdatasync",
            Unit::Seconds,
            self.fsync_seconds.clone(),
        );
        r.register("wal_fsyncs", "WAL fdatasyncs", self.fsyncs.clone());
        r.register_with_unit(
            "wal",
            "Bytes in WAL segment files",
            Unit::Bytes,
            self.wal_bytes.clone(),
        );
    }

    /// Client requests and connections.
    fn register_clients(&self, r: &mut Registry) {
        r.register(
            "client_requests",
            "Client requests answered, by operation",
            self.client_requests.clone(),
        );
        r.register_with_unit(
            "client_request_duration",
            "Client request latency, by operation",
            Unit::Seconds,
            self.client_seconds.clone(),
        );
        r.register(
            "client_connections",
            "Client connections open",
            self.client_connections.clone(),
        );
        r.register(
            "client_refusals",
            "Client connections refused or cut off, by reason",
            self.client_refusals.clone(),
        );
    }

    /// Peer messages and connections.
    fn register_peers(&self, r: &mut Registry) {
        r.register(
            "peer_messages_sent",
            "Peer messages handed to the network",
            self.peer_sent.clone(),
        );
        r.register(
            "peer_messages_received",
            "Peer messages received",
            self.peer_received.clone(),
        );
        r.register(
            "peer_messages_dropped",
            "Peer messages dropped on a full queue",
            self.peer_dropped.clone(),
        );
        r.register(
            "peer_refusals",
            "Peer connections or frames refused",
            self.peer_refused.clone(),
        );
        r.register(
            "peer_queue_depth",
            "Messages waiting for each peer",
            self.peer_queue_depth.clone(),
        );
    }

    /// Local and installed snapshots.
    fn register_snapshots(&self, r: &mut Registry) {
        r.register(
            "snapshots",
            "Local snapshots made durable",
            self.snapshots.clone(),
        );
        r.register_with_unit(
            "snapshot_duration",
            "Time from capture to durable snapshot",
            Unit::Seconds,
            self.snapshot_seconds.clone(),
        );
        r.register_with_unit(
            "snapshot",
            "State bytes in the latest local snapshot",
            Unit::Bytes,
            self.snapshot_bytes.clone(),
        );
        r.register(
            "snapshots_installed",
            "Snapshots installed from the leader",
            self.snapshots_installed.clone(),
        );
    }

    /// Copies in what the status board and the transport keep.
    pub fn refresh(
        &self,
        status: &NodeStatus,
        transport: &TransportStats,
        queues: &[(u64, usize)],
    ) {
        let int = |v: u64| v.min(i64::MAX as u64) as i64;
        self.term.set(int(status.term));
        self.commit_index.set(int(status.commit));
        self.applied_index.set(int(status.applied));
        self.last_index.set(int(status.last_index));
        self.wal_bytes.set(int(status.wal_bytes));
        self.is_leader
            .set(i64::from(status.leader == Some(status.id)));
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        self.peer_sent
            .inc_by(transport.sent.saturating_sub(seen.sent));
        self.peer_received
            .inc_by(transport.received.saturating_sub(seen.received));
        self.peer_dropped
            .inc_by(transport.dropped.saturating_sub(seen.dropped));
        self.peer_refused
            .inc_by(transport.refused.saturating_sub(seen.refused));
        *seen = *transport;
        for &(peer, depth) in queues {
            self.peer_queue_depth
                .get_or_create(&PeerLabel {
                    peer: peer.to_string(),
                })
                .set(depth.min(i64::MAX as usize) as i64);
        }
    }

    /// Notes the leader this node now follows (0: none), counting changes.
    pub fn leader_seen(&self, leader: u64) {
        use std::sync::atomic::Ordering;
        if self.last_leader.swap(leader, Ordering::Relaxed) != leader {
            self.leader_changes.inc();
        }
    }

    /// Observes a client request's latency.
    pub fn client_request(&self, op: &'static str, took: Duration) {
        let label = OpLabel { op };
        self.client_requests.get_or_create(&label).inc();
        self.client_seconds
            .get_or_create(&label)
            .observe(took.as_secs_f64());
    }

    /// Counts a refused client connection.
    pub fn client_refused(&self, reason: &'static str) {
        self.client_refusals
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
