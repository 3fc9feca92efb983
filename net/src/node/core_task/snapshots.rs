//! The core task's side of snapshots: when to take one, and what to do with
//! what the snapshot tasks report (`node/snapshot_task.rs`).

use kv_engine::kv::KvStore;
use kv_engine::raft::SnapshotInfo;
use kv_proto::raft::SnapshotMeta;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::time::Instant;

use super::CoreTask;
use crate::api::{ClientReply, FailKind};
use crate::node::events::NodeEvent;
use crate::node::snapshot_task::SnapshotDone;
use crate::node::supervisor::Ended;
use crate::node::NodeConfig;

/// When the next snapshot is due: after enough entries or enough bytes of
/// them since the last, each threshold stretched by a per-node random share
/// (up to a quarter) so that the nodes of a cluster do not all snapshot at
/// the same index and stall together.
#[derive(Debug)]
pub(super) struct SnapshotPlan {
    entries: u64,
    bytes: u64,
    rng: ChaCha8Rng,
    /// The thresholds for the next snapshot, jitter included.
    next_entries: u64,
    next_bytes: u64,
    /// Applied entries and their bytes since the last snapshot was taken.
    entries_since: u64,
    bytes_since: u64,
    /// The last snapshot's index.
    pub(super) last_index: u64,
    /// When the snapshot being written was captured (None: none is).
    pub(super) in_flight: Option<Instant>,
    /// A snapshot is durable; the WAL behind it is still to be compacted.
    pub(super) compact_due: Option<SnapshotMeta>,
}

impl SnapshotPlan {
    pub(super) fn new(cfg: &NodeConfig, last_index: u64) -> Self {
        let mut plan = SnapshotPlan {
            entries: cfg.snapshot_entries,
            bytes: cfg.snapshot_bytes,
            rng: ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5a5a_5a5a),
            next_entries: 0,
            next_bytes: 0,
            entries_since: 0,
            bytes_since: 0,
            last_index,
            in_flight: None,
            compact_due: None,
        };
        plan.draw();
        plan
    }

    fn draw(&mut self) {
        let stretch = |base: u64, rng: &mut ChaCha8Rng| base + rng.random_range(0..=base / 4);
        self.next_entries = stretch(self.entries, &mut self.rng);
        self.next_bytes = stretch(self.bytes, &mut self.rng);
    }

    /// An entry of `bytes` was applied.
    pub(super) fn applied(&mut self, bytes: u64) {
        self.entries_since += 1;
        self.bytes_since += bytes;
    }

    fn due(&self) -> bool {
        self.in_flight.is_none()
            && (self.entries_since >= self.next_entries || self.bytes_since >= self.next_bytes)
    }

    fn started(&mut self) {
        self.in_flight = Some(Instant::now());
        self.entries_since = 0;
        self.bytes_since = 0;
        self.draw();
    }
}

impl CoreTask<'_> {
    /// Takes a snapshot if one is due: the state machine is captured here
    /// in O(1); the saver writes it while this task goes on.
    pub(super) fn maybe_snapshot(&mut self) {
        if !self.plan.due() {
            return;
        }
        let index = self.applied;
        let Some(term) = self.core.log().term(index) else {
            return;
        };
        let meta = SnapshotMeta { index, term };
        tracing::info!(
            node = self.id,
            index,
            keys = self.kv.len(),
            "taking snapshot"
        );
        if self
            .snapshots
            .save
            .try_send((meta, self.kv.capture()))
            .is_ok()
        {
            self.plan.started();
        }
    }

    /// Handles what a snapshot task reports.
    pub(super) fn on_snapshot_done(&mut self, done: SnapshotDone) -> Result<(), Ended> {
        match done {
            SnapshotDone::Saved(info) => {
                tracing::info!(
                    node = self.id,
                    index = info.meta.index,
                    bytes = info.size,
                    "snapshot saved"
                );
                let took = self.plan.in_flight.take().map(|t| t.elapsed());
                self.metrics.snapshots.inc();
                self.metrics
                    .snapshot_bytes
                    .set(info.size.min(i64::MAX as u64) as i64);
                if let Some(t) = took {
                    self.metrics.snapshot_seconds.observe(t.as_secs_f64());
                }
                self.plan.last_index = info.meta.index;
                let (node, index, bytes) = (self.id, info.meta.index, info.size);
                self.events.emit(|| NodeEvent::SnapshotSaved {
                    node,
                    index,
                    bytes,
                    millis: took.map_or(0, |t| t.as_millis() as u64),
                });
                self.plan.compact_due = Some(info.meta);
                self.core.compact(info);
            }
            SnapshotDone::SaveFailed(e) => {
                tracing::error!(node = self.id, error = %e, "taking a snapshot failed; will try again later");
                self.plan.in_flight = None;
            }
            SnapshotDone::Chunk(m) => self.transport.send(m),
            SnapshotDone::ChunkFailed { to } => self.core.snapshot_send_failed(to),
            SnapshotDone::ChunkWritten { meta, next_offset } => {
                self.core.on_snapshot_chunk_written(meta, next_offset);
            }
            SnapshotDone::Received(info, kv) => {
                if self.core.on_snapshot_received(info) {
                    self.install_snapshot(info, *kv);
                } else {
                    tracing::debug!(
                        node = self.id,
                        index = info.meta.index,
                        "received snapshot no longer needed"
                    );
                }
            }
            SnapshotDone::ReceiveFailed(error) => {
                return Err(Ended::DiskFailed {
                    error,
                    cut_back: None,
                });
            }
        }
        Ok(())
    }

    /// The state machine is now the one rebuilt from a snapshot the leader sent.
    fn install_snapshot(&mut self, info: SnapshotInfo, kv: KvStore) {
        let index = info.meta.index;
        self.kv = kv;
        tracing::info!(
            node = self.id,
            index,
            keys = self.kv.len(),
            "installed snapshot from leader"
        );
        self.applied = index;
        self.plan.last_index = index;
        self.metrics.snapshots_installed.inc();
        if self.events.enabled() {
            let (node, digest) = (self.id, self.kv.digest());
            self.events.emit(|| NodeEvent::InstalledSnapshot {
                node,
                index,
                digest,
            });
        }
        // Writes waiting at covered indexes were decided by the leader; we
        // cannot tell their outcome here.
        let covered: Vec<u64> = self.writes.range(..=index).map(|(&i, _)| i).collect();
        for i in covered {
            if let Some(w) = self.writes.remove(&i) {
                let _ = w.reply.send(ClientReply::Failed(FailKind::Unknown));
            }
        }
    }
}
