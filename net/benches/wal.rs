//! WAL benchmark, on the real disk (a directory under `target/`):
//!
//! 1. the raw rate of one writer doing a 100-byte append + fdatasync;
//! 2. the WAL's durable entries/s with 1, 64 and 1024 concurrent writers,
//!    each waiting for its own entry to be durable, behind one committer
//!    that turns everything pending into one append and one fdatasync;
//! 3. the restart time of a node holding 1 million entries (snapshot + WAL).
//!
//! `cargo bench -p kv-net --bench wal` (`WAL_BENCH_SECS` per level, default 2).
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kv_engine::kv::{encode_command, KvStore};
use kv_engine::raft::{Config, RaftCore, Restored};
use kv_net::fs::StdFs;
use kv_net::snapshots::{restore, write_snapshot};
use kv_net::storage::{Storage, StorageOptions};
use kv_proto::command::{command::Op, Command, Set};
use kv_proto::raft::{Entry, HardState, SnapshotMeta};

fn bench_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/bench-data")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

/// One writer: 100-byte append + fdatasync, as fast as the disk allows.
fn raw_fsync(secs: f64) -> (f64, Duration, Duration) {
    let dir = bench_dir("raw");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("raw.log"))
        .unwrap();
    let payload = [7u8; 100];
    let mut lat = Vec::new();
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < secs {
        let t = Instant::now();
        file.write_all(&payload).unwrap();
        file.sync_data().unwrap();
        lat.push(t.elapsed());
    }
    let rate = lat.len() as f64 / start.elapsed().as_secs_f64();
    lat.sort();
    (rate, percentile(&lat, 0.5), percentile(&lat, 0.99))
}

/// `writers` concurrent writers (async tasks, as client connections are in
/// the server) each append one entry at a time and wait until it is
/// durable; one committer turns everything pending into one append: one
/// write and one fdatasync (group commit).
fn group_commit(writers: usize, secs: f64) -> (f64, Duration, Duration) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let dir = bench_dir(&format!("group-{writers}"));
        let (mut storage, _) =
            Storage::open(StdFs::new(), &dir, StorageOptions::default()).unwrap();
        let (submit, mut pending) =
            tokio::sync::mpsc::unbounded_channel::<(Bytes, tokio::sync::oneshot::Sender<()>)>();
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        let mut tasks = Vec::new();
        for w in 0..writers {
            let submit = submit.clone();
            tasks.push(tokio::spawn(async move {
                let data = Bytes::from(vec![w as u8; 100]);
                let mut lat = Vec::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let (done, wait) = tokio::sync::oneshot::channel();
                    if submit.send((data.clone(), done)).is_err() || wait.await.is_err() {
                        break;
                    }
                    lat.push(t.elapsed());
                }
                lat
            }));
        }
        drop(submit);
        let start = Instant::now();
        let mut index = 0u64;
        let mut durable = 0u64;
        let mut entries = Vec::new();
        let mut waiting = Vec::new();
        while let Some((data, done)) = pending.recv().await {
            entries.clear();
            index += 1;
            entries.push(Entry {
                term: 1,
                index,
                data,
            });
            waiting.push(done);
            while let Ok((data, done)) = pending.try_recv() {
                index += 1;
                entries.push(Entry {
                    term: 1,
                    index,
                    data,
                });
                waiting.push(done);
            }
            // The write and fdatasync block this thread, as they would the
            // storage task's blocking thread in the server.
            storage
                .append(
                    Some(&HardState {
                        term: 1,
                        vote: 1,
                        commit: index,
                        ..Default::default()
                    }),
                    &entries,
                )
                .unwrap();
            durable += entries.len() as u64;
            for done in waiting.drain(..) {
                let _ = done.send(());
            }
        }
        let rate = durable as f64 / start.elapsed().as_secs_f64();
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await.unwrap());
        }
        lat.sort();
        (rate, percentile(&lat, 0.5), percentile(&lat, 0.99))
    })
}

fn command(i: u64) -> Bytes {
    let cmd = Command {
        op: Some(Op::Set(Set {
            key: Bytes::from(format!("key-{:08}", i % 100_000)),
            value: Bytes::from(vec![b'v'; 80]),
        })),
        ..Default::default()
    };
    encode_command(&cmd)
}

/// Builds a node's directory with a snapshot at 500,000 and 1,000,000
/// entries in all, then times a restart: open storage, restore the state
/// machine, build the core.
fn restart_1m() -> (Duration, Duration, usize) {
    let dir = bench_dir("restart");
    let opts = StorageOptions::default();
    let total = 1_000_000u64;
    let snap_at = 500_000u64;
    {
        let (mut storage, _) = Storage::open(StdFs::new(), &dir, opts.clone()).unwrap();
        let mut kv = KvStore::new();
        let mut batch = Vec::with_capacity(10_000);
        for i in 1..=total {
            let data = command(i);
            if i <= snap_at {
                kv.apply_entry_data(&data, i).unwrap();
            }
            batch.push(Entry {
                term: 1,
                index: i,
                data,
            });
            if batch.len() == 10_000 {
                storage
                    .append(
                        Some(&HardState {
                            term: 1,
                            vote: 1,
                            commit: i,
                            ..Default::default()
                        }),
                        &batch,
                    )
                    .unwrap();
                batch.clear();
            }
            if i == snap_at {
                let meta = SnapshotMeta {
                    index: snap_at,
                    term: 1,
                };
                write_snapshot(&StdFs::new(), &dir, meta, &kv.capture()).unwrap();
                storage.compact(meta, &[]).unwrap();
            }
        }
    }
    let start = Instant::now();
    let (_storage, recovered) = Storage::open(StdFs::new(), &dir, opts).unwrap();
    let opened = start.elapsed();
    let kv = restore(&StdFs::new(), &dir, recovered.snapshot.unwrap()).unwrap();
    let entries = recovered.entries.len();
    let restored = Restored {
        hard_state: recovered.hard_state,
        snapshot: recovered.snapshot,
        entries: recovered.entries,
        ..Default::default()
    };
    let core = RaftCore::new(Config::new(1, vec![1, 2, 3]), restored).unwrap();
    let total_time = start.elapsed();
    assert_eq!(core.log().last_index(), total);
    assert_eq!(kv.len(), 100_000);
    (opened, total_time, entries)
}

fn dir_is_tmpfs(path: &Path) -> bool {
    std::fs::read_to_string("/proc/mounts").is_ok_and(|m| {
        m.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 2 && f[2] == "tmpfs" && path.starts_with(f[1]) && f[1] != "/"
        })
    })
}

fn main() {
    let secs: f64 = std::env::var("WAL_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let probe = bench_dir("probe");
    if dir_is_tmpfs(&probe) {
        println!(
            "warning: {} is on tmpfs; fsync figures mean nothing there",
            probe.display()
        );
    }
    let (raw_rate, raw_p50, raw_p99) = raw_fsync(secs);
    println!("raw disk, one writer, 100-byte append + fdatasync:");
    println!("  {raw_rate:.0} syncs/s, p50 {raw_p50:?}, p99 {raw_p99:?}");
    println!();
    println!("| writers | durable entries/s | x raw fsync rate | p50 latency | p50 / raw p50 | p99 latency |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for writers in [1, 64, 1024] {
        let (rate, p50, p99) = group_commit(writers, secs);
        println!(
            "| {writers} | {rate:.0} | {:.1} | {p50:?} | {:.2} | {p99:?} |",
            rate / raw_rate,
            p50.as_secs_f64() / raw_p50.as_secs_f64()
        );
    }
    println!();
    let (opened, total, entries) = restart_1m();
    println!(
        "restart of a node with 1,000,000 entries (snapshot at 500,000 + {entries} WAL entries): \
         storage open {opened:?}, with state machine and core {total:?}"
    );
}
