//! The task that owns storage: it turns Ready writes into WAL appends with
//! one fsync per batch, compacts the WAL behind durable snapshots, records
//! snapshots installed from the leader, and reports completions in order.
//!
//! Writes queued while an fsync is running are merged into the next append
//! (group commit across Readies). Completions come back in the order the
//! writes were queued, which is what lets a Ready's `persisted_messages`
//! leave only after every earlier write is durable too.

use std::sync::Arc;

use kv_engine::storage::batch::{SyncRule, WriteBatch};
use kv_proto::raft::{Entry, HardState, Message, SnapshotMeta};
use tokio::sync::mpsc;

use crate::fs::FileSystem;
use crate::metrics::Metrics;
use crate::node::sim_disk::SimDisk;
use crate::status::StatusBoard;
use crate::storage::{Storage, StorageError};

/// The most Ready writes merged into one append.
const MERGE_MAX: usize = 256;

/// The durable part of one Ready.
#[derive(Debug)]
pub(crate) struct WriteJob {
    pub(crate) hard_state: Option<HardState>,
    pub(crate) entries: Vec<Entry>,
    /// A snapshot received from the leader, durable in its file: the log
    /// restarts after it.
    pub(crate) snapshot: Option<SnapshotMeta>,
    pub(crate) persisted_messages: Vec<Message>,
    pub(crate) point: Option<(u64, u64)>,
}

/// Work for the storage task.
#[derive(Debug)]
pub(crate) enum StorageJob {
    /// Persist a Ready's writes.
    Write(WriteJob),
    /// A locally taken snapshot is durable: drop the WAL and the snapshot
    /// files behind it, but for those of the snapshots still being sent.
    Compact(SnapshotMeta, Vec<u64>),
}

/// What the storage task reports back, in queue order.
#[derive(Debug)]
pub(crate) enum StorageDone {
    /// A Ready's writes are durable: its messages may go.
    Written {
        persisted_messages: Vec<Message>,
        point: Option<(u64, u64)>,
    },
    /// The WAL behind a snapshot is compacted.
    Compacted,
    /// Storage failed: nothing it was given since is durable. The node
    /// must reopen it from disk, cutting this segment back first.
    Failed(StorageError, Option<(std::path::PathBuf, u64)>),
}

/// Starts the storage task.
pub(crate) fn spawn<F: FileSystem + Send + 'static>(
    storage: Storage<F>,
    capacity: usize,
    disk: SimDisk,
    board: Arc<StatusBoard>,
    metrics: Arc<Metrics>,
) -> (
    mpsc::Sender<StorageJob>,
    mpsc::Receiver<StorageDone>,
    tokio::task::JoinHandle<()>,
) {
    let (job_tx, job_rx) = mpsc::channel(capacity);
    // Every queued job produces at most one completion, so this bound is never hit.
    let (done_tx, done_rx) = mpsc::channel(capacity + MERGE_MAX + 1);
    let join = tokio::spawn(run(storage, job_rx, done_tx, disk, board, metrics));
    (job_tx, done_rx, join)
}

/// Entries and hard state of several merged Readies (group commit).
type Batch = WriteBatch<StorageDone>;

/// Adds a Ready's writes to the batch.
fn merge(batch: &mut Batch, job: WriteJob) {
    let done = StorageDone::Written {
        persisted_messages: job.persisted_messages,
        point: job.point,
    };
    batch.merge(job.hard_state, job.entries, done);
}

/// What a storage call gives back: the storage, how it went, and the
/// completions to report if it went well.
type Outcome<F> = (Storage<F>, Result<(), StorageError>, Vec<StorageDone>);

async fn run<F: FileSystem + Send + 'static>(
    mut storage: Storage<F>,
    mut jobs: mpsc::Receiver<StorageJob>,
    done: mpsc::Sender<StorageDone>,
    disk: SimDisk,
    board: Arc<StatusBoard>,
    metrics: Arc<Metrics>,
) {
    board.update(|s| s.wal_bytes = storage.wal_bytes());
    let mut next: Option<StorageJob> = None;
    let mut sync_rule = SyncRule::default();
    loop {
        let job = match next.take() {
            Some(job) => job,
            None => match jobs.recv().await {
                Some(job) => job,
                None => return,
            },
        };
        let (result, completions);
        let started = tokio::time::Instant::now();
        let syncs = matches!(job, StorageJob::Write(_));
        (storage, result, completions) = match job {
            StorageJob::Write(first) if first.snapshot.is_none() => {
                let batch = gather_batch(first, &mut jobs, &mut next);
                let must_sync = sync_rule.must_sync(&batch);
                write_batch(storage, batch, must_sync, &disk).await
            }
            StorageJob::Write(job) => install_snapshot(storage, job).await,
            StorageJob::Compact(meta, being_sent) => {
                blocking(storage, move |s| {
                    (s.compact(meta, &being_sent), vec![StorageDone::Compacted])
                })
                .await
            }
        };
        if syncs {
            metrics.fsyncs.inc();
            metrics
                .fsync_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        board.update(|s| s.wal_bytes = storage.wal_bytes());
        if let Err(e) = result {
            let cut_back = storage.cut_back();
            let _ = done.send(StorageDone::Failed(e, cut_back)).await;
            return;
        }
        for c in completions {
            if done.send(c).await.is_err() {
                return;
            }
        }
    }
}

/// Group commit: `first` and whatever other plain writes are queued right
/// now, up to `MERGE_MAX`, as one batch; a job of another kind is kept in
/// `next` for the following round.
fn gather_batch(
    first: WriteJob,
    jobs: &mut mpsc::Receiver<StorageJob>,
    next: &mut Option<StorageJob>,
) -> Batch {
    let mut batch = Batch::default();
    merge(&mut batch, first);
    while batch.done.len() < MERGE_MAX {
        match jobs.try_recv() {
            Ok(StorageJob::Write(w)) if w.snapshot.is_none() => merge(&mut batch, w),
            Ok(other) => {
                *next = Some(other);
                break;
            }
            Err(_) => break,
        }
    }
    debug_assert!(!batch.is_empty(), "a batch holds at least its first write");
    batch
}

/// Writes a batch with one fsync, or none when `SyncRule` says none is
/// needed (only the commit index changed).
async fn write_batch<F: FileSystem + Send + 'static>(
    storage: Storage<F>,
    batch: Batch,
    must_sync: bool,
    disk: &SimDisk,
) -> Outcome<F> {
    if must_sync && disk.fsync_is_instant() {
        // One trip to the blocking pool for write and fsync.
        let done = batch.done;
        let (hs, entries) = (batch.hard_state, batch.entries);
        return blocking(storage, move |s| (s.append(hs.as_ref(), &entries), done)).await;
    }
    let bytes: u64 = batch.entries.iter().map(|e| e.data.len() as u64).sum();
    let (storage, written, (wrote, done)) = blocking(storage, move |s| {
        match s.write(batch.hard_state.as_ref(), &batch.entries) {
            Ok(wrote) => (Ok(()), (wrote, batch.done)),
            Err(e) => (Err(e), (false, batch.done)),
        }
    })
    .await;
    match written {
        Err(e) => (storage, Err(e), done),
        Ok(()) if !wrote || !must_sync => (storage, Ok(()), done),
        Ok(()) => {
            // The write is in the page cache, not yet durable: a simulated
            // crash here loses it (or tears it).
            disk.fsync(bytes).await;
            blocking(storage, move |s| (s.sync(), done)).await
        }
    }
}

/// A snapshot from the leader replaces the log, then the Ready's own
/// entries and hard state follow it.
async fn install_snapshot<F: FileSystem + Send + 'static>(
    storage: Storage<F>,
    job: WriteJob,
) -> Outcome<F> {
    blocking(storage, move |s| {
        let mut r = Ok(());
        if let Some(meta) = job.snapshot {
            r = s.install_snapshot(meta, job.hard_state.as_ref());
        }
        if r.is_ok() && (job.hard_state.is_some() || !job.entries.is_empty()) {
            r = s.append(job.hard_state.as_ref(), &job.entries);
        }
        let done = StorageDone::Written {
            persisted_messages: job.persisted_messages,
            point: job.point,
        };
        (r, vec![done])
    })
    .await
}

/// Runs a storage call off the async threads and hands the storage back.
async fn blocking<F, T>(
    storage: Storage<F>,
    f: impl FnOnce(&mut Storage<F>) -> (Result<(), StorageError>, T) + Send + 'static,
) -> (Storage<F>, Result<(), StorageError>, T)
where
    F: FileSystem + Send + 'static,
    T: Send + 'static,
{
    let run = move || {
        let mut storage = storage;
        let (r, t) = f(&mut storage);
        (storage, r, t)
    };
    // The simulated disk never blocks, and the simulation has no threads.
    #[cfg(madsim)]
    return run();
    #[cfg(not(madsim))]
    match tokio::task::spawn_blocking(run).await {
        Ok(out) => out,
        // The closure panicked: storage is gone and nothing can continue.
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}
