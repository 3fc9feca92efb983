//! A node's lives over its storage. Each life opens the data dir, rebuilds
//! the state machine and the Raft core from it, and runs the core task
//! until shutdown or a disk failure. A disk failure (EIO, ENOSPC) ends the
//! life, never the process: whatever the failed call covered was never
//! acknowledged, the core and its in-memory state are dropped, and once the
//! disk takes a test write again the next life starts from what is on disk,
//! exactly as after a crash. Meanwhile the node answers clients that it is
//! unavailable and drops peer messages (peers see it as down).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kv_engine::kv::KvStore;
use kv_engine::raft::{RaftCore, Restored};
use tokio::sync::{mpsc, watch};

use super::core_task::CoreTask;
use super::events::NodeEvent;
use super::{snapshot_task, storage_task, NodeConfig, NodeError};
use crate::api::{ClientOp, ClientReply, ClientRequest, FailKind};
use crate::fs::FileSystem;
use crate::metrics::Metrics;
use crate::node::sim_disk::SimDisk;
use crate::peer_inbox::Inbox;
use crate::status::StatusBoard;
use crate::storage::{Recovered, Storage, StorageError};
use crate::transport::PeerTransport;

/// First wait before a failed disk is tried again; it doubles up to the
/// most. The most is short: the node should rejoin soon after an operator
/// frees space (at 10 s, a cluster with one other member recovering could
/// stay without a leader that long: simulation seed 3317 with disk faults
/// only), and a probe (4 KiB written, synced, removed) costs next to nothing.
const DISK_RETRY_FIRST: Duration = Duration::from_millis(500);
const DISK_RETRY_MOST: Duration = Duration::from_secs(2);

/// What reaches a node from outside; it outlives each life of the core.
pub(crate) struct Inputs {
    pub(crate) peer_rx: Inbox,
    pub(crate) request_rx: mpsc::Receiver<ClientRequest>,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Where the node's status is published.
    pub(crate) board: Arc<StatusBoard>,
    /// The node's metrics.
    pub(crate) metrics: Arc<Metrics>,
}

/// How one life of the core ended.
pub(crate) enum Ended {
    /// Shutdown was asked for.
    Shutdown,
    /// The disk failed: reopen storage from disk once it works again,
    /// cutting this segment back to its last fsync first.
    DiskFailed {
        error: StorageError,
        cut_back: Option<(PathBuf, u64)>,
    },
    /// Something retrying cannot fix.
    Failed(NodeError),
}

/// Opens the data dir.
pub(crate) fn open_storage<F: FileSystem>(
    cfg: &NodeConfig,
    fs: &F,
    cut_back: Option<(PathBuf, u64)>,
    cache_untrusted: bool,
) -> Result<(Storage<F>, Recovered), StorageError> {
    let mut opts = cfg.storage_options();
    opts.cut_back = cut_back;
    opts.cache_untrusted = cache_untrusted;
    Storage::open(fs.clone(), Path::new(&cfg.data_dir), opts)
}

/// Runs lives until shutdown or an error no retry can fix.
pub(crate) async fn supervise<F: FileSystem>(
    cfg: NodeConfig,
    fs: F,
    first: Result<(Storage<F>, Recovered), StorageError>,
    transport: PeerTransport,
    mut inputs: Inputs,
) -> Result<(), NodeError> {
    let mut next = first;
    let mut cut_back = None;
    // Whether `next` is the outcome of opening the data dir (not of a life
    // that ended on a disk error, whose cut-back says what to trust).
    let mut from_open = true;
    let result = loop {
        let (storage, recovered) = match next {
            Ok(opened) => opened,
            Err(e) if e.is_disk_fault() => {
                let untrusted = from_open && e.is_failed_fsync();
                match wait_for_disk(&cfg, &fs, &mut inputs, &e, cut_back.take(), untrusted).await {
                    Some(opened) => opened,
                    None => break Ok(()),
                }
            }
            Err(e) => break Err(NodeError::Storage(e)),
        };
        match live(&cfg, &fs, storage, recovered, &transport, &mut inputs).await {
            Ended::Shutdown => break Ok(()),
            Ended::Failed(e) => break Err(e),
            Ended::DiskFailed { error, cut_back: c } => {
                cut_back = c;
                from_open = false;
                next = Err(error);
            }
        }
    };
    transport.shutdown();
    // Requests still queued never reached the core: say so (a retry is
    // safe), and take no more.
    inputs.request_rx.close();
    while let Ok(req) = inputs.request_rx.try_recv() {
        let _ = req.reply.send(ClientReply::Failed(FailKind::Unavailable));
    }
    result
}

/// One life: the state machine and core rebuilt from storage, run until
/// they end.
async fn live<F: FileSystem>(
    cfg: &NodeConfig,
    fs: &F,
    storage: Storage<F>,
    recovered: Recovered,
    transport: &PeerTransport,
    inputs: &mut Inputs,
) -> Ended {
    let (core, kv) = match rebuild(cfg, recovered) {
        Ok(built) => built,
        Err(e) => return Ended::Failed(e),
    };
    let disk = SimDisk::new(
        cfg.disk_latency_max,
        cfg.disk_bytes_per_sec,
        cfg.seed ^ 0xd15c,
    );
    inputs.board.update(|s| s.disk_ok = true);
    let (storage_tx, storage_done_rx, storage_join) = storage_task::spawn(
        storage,
        cfg.storage_queue_capacity,
        disk.clone(),
        inputs.board.clone(),
        inputs.metrics.clone(),
    );
    let (snapshots, snapshot_done_rx, snapshot_join) =
        snapshot_task::spawn(fs.clone(), cfg.data_dir.clone(), disk);
    let task = CoreTask::new(cfg, core, kv, transport, storage_tx, snapshots, inputs);
    let ended = task.run(inputs, storage_done_rx, snapshot_done_rx).await;
    // The snapshot tasks end after the file work in hand: the next life
    // must not find them still writing. The storage task ends once the
    // core drops its queue; it holds the data dir's lock until then, so it
    // goes last (no other process may take the dir while this one writes).
    snapshot_join.join().await;
    let _ = storage_join.await;
    ended
}

/// The state machine and the Raft core, from what storage recovered.
fn rebuild(cfg: &NodeConfig, recovered: Recovered) -> Result<(RaftCore, KvStore), NodeError> {
    let kv = recovered.state;
    let restored = Restored {
        hard_state: recovered.hard_state,
        snapshot: recovered.snapshot,
        entries: recovered.entries,
        found: recovered.found,
        nonce: rand::random(),
    };
    let core =
        RaftCore::new(cfg.raft_config(), restored).map_err(|e| NodeError::Config(e.to_string()))?;
    let (node, term, commit, snapshot_index, standing) = (
        cfg.id,
        core.term(),
        core.log().committed(),
        core.log().snapshot_index(),
        core.standing(),
    );
    cfg.events.emit(|| NodeEvent::Started {
        node,
        term,
        commit,
        snapshot_index,
        standing,
    });
    tracing::info!(
        node,
        term,
        last_index = core.log().last_index(),
        commit,
        ?standing,
        found = ?recovered.found,
        "recovered"
    );
    Ok((core, kv))
}

/// Waits until the disk takes a test write and the data dir opens again.
/// Returns None if the node is shut down meanwhile.
async fn wait_for_disk<F: FileSystem>(
    cfg: &NodeConfig,
    fs: &F,
    inputs: &mut Inputs,
    error: &StorageError,
    mut cut_back: Option<(PathBuf, u64)>,
    mut cache_untrusted: bool,
) -> Option<(Storage<F>, Recovered)> {
    tracing::error!(
        node = cfg.id,
        %error,
        "disk failed: this node takes no part in the cluster until its disk works again \
         (nothing it acknowledged is affected)"
    );
    inputs.board.update(|s| {
        s.disk_ok = false;
        s.role = kv_engine::raft::Role::Follower;
        s.leader = None;
        s.quorum_contact = None;
    });
    let mut wait = DISK_RETRY_FIRST;
    let mut retry = Box::pin(tokio::time::sleep(wait));
    loop {
        tokio::select! {
            biased;
            _ = inputs.shutdown.changed() => return None,
            _ = &mut retry => {
                if probe(cfg, fs).is_ok() {
                    match open_storage(cfg, fs, cut_back.clone(), cache_untrusted) {
                        Ok(opened) => {
                            tracing::info!(node = cfg.id, "disk works again: rejoining the cluster");
                            return Some(opened);
                        }
                        Err(e) if e.is_disk_fault() => {
                            tracing::debug!(node = cfg.id, error = %e, "data dir still fails to open");
                            cache_untrusted |= e.is_failed_fsync();
                        }
                        Err(e) => {
                            tracing::error!(node = cfg.id, error = %e, "data dir cannot be reopened");
                            cut_back = None;
                        }
                    }
                }
                wait = (wait * 2).min(DISK_RETRY_MOST);
                retry = Box::pin(tokio::time::sleep(wait));
            }
            Some(req) = inputs.request_rx.recv() => {
                let reply = match req.op {
                    ClientOp::Status => ClientReply::Status(Box::new(inputs.board.snapshot())),
                    _ => ClientReply::Failed(FailKind::Unavailable),
                };
                let _ = req.reply.send(reply);
            }
            Some(_) = inputs.peer_rx.recv() => {}
        }
    }
}

/// A test write: a small file written, synced and removed.
fn probe<F: FileSystem>(cfg: &NodeConfig, fs: &F) -> std::io::Result<()> {
    let path = Path::new(&cfg.data_dir).join("probe.tmp");
    fs.write_synced(&path, &[0u8; 4096])?;
    fs.remove(&path)?;
    fs.sync_dir(Path::new(&cfg.data_dir))
}
