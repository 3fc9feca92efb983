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
//! Every result goes back to the core task on one channel. Once the core
//! stops reading it (its life ended), each task finishes the file work in
//! hand and takes no more; the supervisor waits for that before the next
//! life opens the data dir, so no write of one life lands in the next.

use std::path::PathBuf;

use kv_engine::kv::{KvSnapshot, KvStore};
use kv_engine::raft::{SnapshotChunkIn, SnapshotChunkOut, SnapshotInfo};
use kv_proto::raft::{Message, SnapshotMeta};
use tokio::sync::mpsc;

use crate::fs::FileSystem;
use crate::node::sim_disk::SimDisk;
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

/// The three tasks, to wait for at the end of a life.
pub(crate) struct SnapshotJoin(Vec<tokio::task::JoinHandle<()>>);

impl SnapshotJoin {
    /// Waits until every task has ended: call once the core has dropped
    /// its queues and the done channel (then each ends after the file
    /// work in hand).
    pub(crate) async fn join(self) {
        for task in self.0 {
            let _ = task.await;
        }
    }
}

/// Starts the three tasks on `dir`; they end when their queues or the done
/// channel are dropped.
pub(crate) fn spawn<F: FileSystem>(
    fs: F,
    dir: PathBuf,
    disk: SimDisk,
) -> (SnapshotTasks, mpsc::Receiver<SnapshotDone>, SnapshotJoin) {
    let (done_tx, done_rx) = mpsc::channel(3 * QUEUE);
    let (save, save_rx) = mpsc::channel(1);
    let (send, send_rx) = mpsc::channel(QUEUE);
    let (receive, receive_rx) = mpsc::channel(QUEUE);
    let files = |disk: SimDisk| Files {
        fs: fs.clone(),
        dir: dir.clone(),
        disk,
    };
    let tasks = vec![
        tokio::spawn(saver(files(disk.clone()), save_rx, done_tx.clone())),
        tokio::spawn(sender(files(disk.clone()), send_rx, done_tx.clone())),
        tokio::spawn(receiver(files(disk), receive_rx, done_tx)),
    ];
    (
        SnapshotTasks {
            save,
            send,
            receive,
        },
        done_rx,
        SnapshotJoin(tasks),
    )
}

/// Awaits `step` (the next job, or the simulated disk's time) unless the
/// core's end of `done` is gone first: None then, as the life ended and
/// wants no more file work.
async fn unless_ended<T>(
    done: &mpsc::Sender<SnapshotDone>,
    step: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        biased;
        _ = done.closed() => None,
        out = step => Some(out),
    }
}

/// What each snapshot task works on.
struct Files<F> {
    fs: F,
    dir: PathBuf,
    /// The simulated disk's timing (no waits outside the simulation).
    disk: SimDisk,
}

async fn saver<F: FileSystem>(
    files: Files<F>,
    mut jobs: mpsc::Receiver<(SnapshotMeta, KvSnapshot)>,
    done: mpsc::Sender<SnapshotDone>,
) {
    while let Some((meta, captured)) = unless_ended(&done, jobs.recv()).await.flatten() {
        let (fs, dir) = (files.fs.clone(), files.dir.clone());
        let result = off_task(move || write_snapshot(&fs, &dir, meta, &captured)).await;
        let report = match result {
            Ok(info) => {
                if unless_ended(&done, files.disk.transfer(info.size))
                    .await
                    .is_none()
                {
                    return;
                }
                SnapshotDone::Saved(info)
            }
            Err(e) => SnapshotDone::SaveFailed(e),
        };
        if done.send(report).await.is_err() {
            return;
        }
    }
}

async fn sender<F: FileSystem>(
    files: Files<F>,
    mut jobs: mpsc::Receiver<SnapshotChunkOut>,
    done: mpsc::Sender<SnapshotDone>,
) {
    let mut pending = Pending::default();
    loop {
        // Requests that piled up while a chunk was read: only the newest
        // for each follower still matters.
        while let Ok(chunk) = jobs.try_recv() {
            pending.push(chunk);
        }
        let chunk = match pending.pop() {
            Some(chunk) => chunk,
            None => match unless_ended(&done, jobs.recv()).await.flatten() {
                Some(chunk) => chunk,
                None => return,
            },
        };
        let (fs, dir) = (files.fs.clone(), files.dir.clone());
        let (meta, offset, len) = (chunk.meta, chunk.offset, chunk.len);
        if unless_ended(&done, files.disk.transfer(len))
            .await
            .is_none()
        {
            return;
        }
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

/// Chunk requests waiting to be read, the newest per follower, oldest
/// follower first.
#[derive(Default)]
struct Pending(std::collections::VecDeque<SnapshotChunkOut>);

impl Pending {
    /// Queues `chunk`, replacing an older request for the same follower.
    fn push(&mut self, chunk: SnapshotChunkOut) {
        match self.0.iter_mut().find(|c| c.to == chunk.to) {
            Some(older) => *older = chunk,
            None => self.0.push_back(chunk),
        }
    }

    fn pop(&mut self) -> Option<SnapshotChunkOut> {
        self.0.pop_front()
    }
}

async fn receiver<F: FileSystem>(
    files: Files<F>,
    mut jobs: mpsc::Receiver<SnapshotChunkIn>,
    done: mpsc::Sender<SnapshotDone>,
) {
    let mut file: Option<SnapshotFileOut<F>> = None;
    while let Some(chunk) = unless_ended(&done, jobs.recv()).await.flatten() {
        let (fs, dir) = (files.fs.clone(), files.dir.clone());
        // The chunk is written, and the whole file read back after the last.
        let read_back = if chunk.done { chunk.offset } else { 0 };
        let transfer = files.disk.transfer(chunk.data.len() as u64 + read_back);
        if unless_ended(&done, transfer).await.is_none() {
            return;
        }
        let current = file.take();
        let (kept, report) = off_task(move || receive(&fs, &dir, current, chunk)).await;
        file = kept;
        let failed = matches!(report, SnapshotDone::ReceiveFailed(_));
        if done.send(report).await.is_err() || failed {
            return;
        }
    }
}

/// Appends one chunk to the snapshot being received (a chunk at offset 0,
/// or of another snapshot, starts a new file and removes the one it
/// replaces); at the last chunk, finishes the file and rebuilds the state
/// machine from it.
fn receive<F: FileSystem>(
    fs: &F,
    dir: &std::path::Path,
    current: Option<SnapshotFileOut<F>>,
    chunk: SnapshotChunkIn,
) -> (Option<SnapshotFileOut<F>>, SnapshotDone) {
    let step = || -> Result<(Option<SnapshotFileOut<F>>, SnapshotDone), StorageError> {
        let mut file = match current {
            Some(f) if chunk.offset != 0 && f.meta() == chunk.meta => f,
            replaced => {
                if let Some(Err(e)) = replaced.map(SnapshotFileOut::abandon) {
                    // Only space is lost; the next start or restart retries.
                    tracing::warn!(error = %e, "could not remove a snapshot transfer given up");
                }
                SnapshotFileOut::start_received(fs, dir, chunk.meta)?
            }
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
        let path = crate::snapshots::received_path(dir, info.meta.index);
        let kv = restore(fs, &path, info).map_err(|e| StorageError::Io {
            op: "read back",
            path,
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use kv_engine::storage::recovery::{received_name, TEMP_SUFFIX};

    use super::*;
    use crate::fs::MemFs;

    fn request(to: u64, offset: u64) -> SnapshotChunkOut {
        SnapshotChunkOut {
            to,
            from: 1,
            term: 1,
            meta: SnapshotMeta { index: 9, term: 1 },
            offset,
            len: 10,
            done: false,
            round: 0,
        }
    }

    fn chunk(index: u64, offset: u64) -> SnapshotChunkIn {
        SnapshotChunkIn {
            meta: SnapshotMeta { index, term: 1 },
            offset,
            data: bytes::Bytes::from_static(b"0123456789"),
            done: false,
        }
    }

    /// Receives `chunks` in order, as the receiver task does.
    fn receive_all(fs: &MemFs, dir: &Path, chunks: Vec<SnapshotChunkIn>) {
        let mut file = None;
        for c in chunks {
            let (kept, report) = receive(fs, dir, file, c);
            assert!(matches!(report, SnapshotDone::ChunkWritten { .. }));
            file = kept;
        }
    }

    #[test]
    fn a_transfer_started_over_removes_the_partial_file_of_the_one_it_replaces() {
        let (fs, dir) = (MemFs::new(), PathBuf::from("/node"));
        // Test only: an in-memory file system, which has no faults unless set.
        fs.create_dir_all(&dir).unwrap();
        receive_all(&fs, &dir, vec![chunk(9, 0), chunk(9, 10), chunk(20, 0)]);
        let names: Vec<_> = fs
            .files_in(&dir)
            .into_iter()
            .map(|p| p.display().to_string())
            .collect();
        assert_eq!(
            names,
            vec![format!("/node/{}{TEMP_SUFFIX}", received_name(20))]
        );
        // Offset 0 of the same snapshot starts it over too (in place).
        receive_all(&fs, &dir, vec![chunk(20, 0), chunk(20, 0)]);
        assert_eq!(fs.files_in(&dir).len(), 1);
    }

    /// A life ends when its core drops the done channel. The tasks take no
    /// more work from then on, and joining them waits for the work in hand:
    /// after the join nothing of that life is written any more.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_life_that_ended_takes_no_more_snapshot_work_and_its_join_waits_for_the_rest() {
        use kv_proto::command::{command::Op, Command, Set};
        let (fs, dir) = (MemFs::new(), PathBuf::from("/node"));
        // Test only: an in-memory file system, which has no faults unless set.
        fs.create_dir_all(&dir).unwrap();
        let mut kv = KvStore::new();
        for i in 0..20_000 {
            kv.apply(&Command {
                op: Some(Op::Set(Set {
                    key: bytes::Bytes::from(format!("key{i:06}")),
                    value: bytes::Bytes::from(vec![b'v'; 100]),
                })),
                ..Default::default()
            });
        }
        let disk = SimDisk::new(std::time::Duration::ZERO, 0, 1);
        let (tasks, done_rx, join) = spawn(fs.clone(), dir.clone(), disk);
        let meta = SnapshotMeta { index: 5, term: 1 };
        // Test only: the saver's queue, open while `tasks` lives.
        tasks.save.send((meta, kv.capture())).await.unwrap();
        drop(done_rx);
        for offset in [0, 10] {
            // Refused once the receiver has seen the end and gone; taken
            // and never worked on otherwise. Either shows what is asked.
            let _ = tasks.receive.send(chunk(9, offset)).await;
        }
        let joined = tokio::time::timeout(std::time::Duration::from_secs(30), join.join()).await;
        assert!(joined.is_ok(), "the tasks outlived their life's end");
        let after_join = fs.files_in(&dir);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert_eq!(fs.files_in(&dir), after_join, "written after the join");
        let names: Vec<String> = after_join.iter().map(|p| p.display().to_string()).collect();
        assert!(
            names
                .iter()
                .all(|n| !n.ends_with(TEMP_SUFFIX) && !n.contains(&received_name(9))),
            "{names:?}"
        );
        drop(tasks);
    }

    #[test]
    fn only_the_newest_request_per_follower_is_read_and_followers_take_turns() {
        let mut p = Pending::default();
        p.push(request(2, 0));
        p.push(request(3, 0));
        p.push(request(2, 10));
        p.push(request(2, 20));
        let order: Vec<(u64, u64)> = std::iter::from_fn(|| p.pop())
            .map(|c| (c.to, c.offset))
            .collect();
        assert_eq!(order, vec![(2, 20), (3, 0)]);
    }
}
