//! Snapshot work, off the core task and off the WAL's fsync path, in three
//! small tasks so that none waits behind another:
//!
//! - the saver writes a captured state machine to a snapshot file (one at
//!   a time; the core task captures in O(1) and goes on);
//! - the sender reads chunks of the local snapshot for followers (one chunk
//!   in flight per follower: the core asks for the next on an answer);
//! - the receiver appends chunks from the leader to a temp file, and once
//!   the last is in makes it durable and rebuilds the state machine from it
//!   (each chunk is acknowledged only once written, so a leader never
//!   outruns this disk).
//!
//! Every result goes back to the core task on one channel.

use std::path::PathBuf;

use kv_engine::kv::{KvSnapshot, KvStore};
use kv_engine::raft::{SnapshotChunkIn, SnapshotChunkOut, SnapshotInfo};
use kv_proto::raft::{Message, SnapshotMeta};
use tokio::sync::mpsc;

use crate::fs::FileSystem;
use crate::snapshots::{read_chunk, restore, write_snapshot, SnapshotFileOut};
use crate::storage::StorageError;

/// What the snapshot tasks report to the core task.
pub(crate) enum SnapshotDone {
    /// A local snapshot is durable.
    Saved(SnapshotInfo),
    /// Taking a local snapshot failed; the node carries on and tries later.
    SaveFailed(StorageError),
    /// A chunk of the local snapshot, ready to send.
    Chunk(Message),
    /// The local snapshot a chunk was asked of is gone or unreadable.
    ChunkFailed { to: u64 },
    /// Received chunks are written up to `next_offset`.
    ChunkWritten {
        meta: SnapshotMeta,
        next_offset: u64,
    },
    /// A snapshot received from the leader is durable, and the state machine
    /// was rebuilt from it.
    Received(SnapshotInfo, Box<KvStore>),
    /// A received snapshot could not be written: a disk failure.
    ReceiveFailed(StorageError),
}

/// The queues into the snapshot tasks.
pub(crate) struct SnapshotTasks {
    pub(crate) save: mpsc::Sender<(SnapshotMeta, KvSnapshot)>,
    pub(crate) send: mpsc::Sender<SnapshotChunkOut>,
    pub(crate) receive: mpsc::Sender<SnapshotChunkIn>,
}

/// Chunks queued per task: flow control keeps far fewer in flight.
const QUEUE: usize = 64;

/// Starts the three tasks on `dir`; they end when their queues are dropped.
pub(crate) fn spawn<F: FileSystem>(
    fs: F,
    dir: PathBuf,
) -> (SnapshotTasks, mpsc::Receiver<SnapshotDone>) {
    let (done_tx, done_rx) = mpsc::channel(3 * QUEUE);
    let (save, save_rx) = mpsc::channel(1);
    let (send, send_rx) = mpsc::channel(QUEUE);
    let (receive, receive_rx) = mpsc::channel(QUEUE);
    tokio::spawn(saver(fs.clone(), dir.clone(), save_rx, done_tx.clone()));
    tokio::spawn(sender(fs.clone(), dir.clone(), send_rx, done_tx.clone()));
    tokio::spawn(receiver(fs, dir, receive_rx, done_tx));
    (
        SnapshotTasks {
            save,
            send,
            receive,
        },
        done_rx,
    )
}

async fn saver<F: FileSystem>(
    fs: F,
    dir: PathBuf,
    mut jobs: mpsc::Receiver<(SnapshotMeta, KvSnapshot)>,
    done: mpsc::Sender<SnapshotDone>,
) {
    while let Some((meta, captured)) = jobs.recv().await {
        let (fs, dir) = (fs.clone(), dir.clone());
        let result = off_task(move || write_snapshot(&fs, &dir, meta, &captured)).await;
        let report = match result {
            Ok(info) => SnapshotDone::Saved(info),
            Err(e) => SnapshotDone::SaveFailed(e),
        };
        if done.send(report).await.is_err() {
            return;
        }
    }
}

async fn sender<F: FileSystem>(
    fs: F,
    dir: PathBuf,
    mut jobs: mpsc::Receiver<SnapshotChunkOut>,
    done: mpsc::Sender<SnapshotDone>,
) {
    while let Some(chunk) = jobs.recv().await {
        let (fs, dir) = (fs.clone(), dir.clone());
        let (meta, offset, len) = (chunk.meta, chunk.offset, chunk.len);
        let read = off_task(move || read_chunk(&fs, &dir, meta, offset, len)).await;
        let report = match read {
            Ok(data) => SnapshotDone::Chunk(chunk.message(data)),
            Err(e) => {
                tracing::warn!(to = chunk.to, index = meta.index, error = %e, "snapshot chunk unreadable; starting over with the newest snapshot");
                SnapshotDone::ChunkFailed { to: chunk.to }
            }
        };
        if done.send(report).await.is_err() {
            return;
        }
    }
}

async fn receiver<F: FileSystem>(
    fs: F,
    dir: PathBuf,
    mut jobs: mpsc::Receiver<SnapshotChunkIn>,
    done: mpsc::Sender<SnapshotDone>,
) {
    let mut file: Option<SnapshotFileOut<F>> = None;
    while let Some(chunk) = jobs.recv().await {
        let (fs, dir) = (fs.clone(), dir.clone());
        let current = file.take();
        let (kept, report) = off_task(move || receive(&fs, &dir, current, chunk)).await;
        file = kept;
        let failed = matches!(report, SnapshotDone::ReceiveFailed(_));
        if done.send(report).await.is_err() || failed {
            return;
        }
    }
}

/// Appends one chunk to the snapshot being received (a chunk at offset 0
/// starts a new one); at the last chunk, finishes the file and rebuilds the
/// state machine from it.
fn receive<F: FileSystem>(
    fs: &F,
    dir: &std::path::Path,
    current: Option<SnapshotFileOut<F>>,
    chunk: SnapshotChunkIn,
) -> (Option<SnapshotFileOut<F>>, SnapshotDone) {
    let step = || -> Result<(Option<SnapshotFileOut<F>>, SnapshotDone), StorageError> {
        let mut file = match current {
            Some(f) if chunk.offset != 0 => f,
            _ => SnapshotFileOut::start(fs, dir, chunk.meta)?,
        };
        debug_assert_eq!(file.data_len(), chunk.offset, "chunks arrive in order");
        file.append(&chunk.data)?;
        if !chunk.done {
            let next_offset = file.data_len();
            let written = SnapshotDone::ChunkWritten {
                meta: chunk.meta,
                next_offset,
            };
            return Ok((Some(file), written));
        }
        let info = file.finish()?;
        let kv = restore(fs, dir, info).map_err(|e| StorageError::Io {
            op: "read back",
            path: crate::snapshots::snapshot_path(dir, info.meta.index),
            source: std::io::Error::other(e),
        })?;
        Ok((None, SnapshotDone::Received(info, Box::new(kv))))
    };
    match step() {
        Ok(out) => out,
        Err(e) => (None, SnapshotDone::ReceiveFailed(e)),
    }
}

/// Runs file work off the async threads (inline in the simulation, whose
/// disk never blocks and which has no threads).
async fn off_task<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    #[cfg(madsim)]
    return f();
    #[cfg(not(madsim))]
    match tokio::task::spawn_blocking(f).await {
        Ok(out) => out,
        // The closure panicked: there is nothing sensible to return.
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}
