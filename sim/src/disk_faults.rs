//! Disk faults for the nemesis. Any node may be hit, but at most a minority
//! is *damaged* (may have lost what it acknowledged) at any time:
//!
//! | fault | damage? |
//! |---|---|
//! | process crash that keeps the page cache, restart, power loss later | no |
//! | disk replaced by an empty one | yes |
//! | a bit flipped in a WAL segment, or in a snapshot file | yes |
//! | EIO on the next writes or renames | no |
//! | EIO on the next fsyncs | may be: one that fails at start-up leaves the node unable to tell what reached its disk, so it starts recovering |
//! | disk full until space is freed | no |
//!
//! A node counts as damaged from the fault until it reports itself a voter
//! again, and while its disk would bring it back recovering (damaged, or
//! empty after it never wrote anything), whether it is up or down.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use kv_engine::raft::{Found, Standing};
use kv_net::fs::{DiskFaults, DiskOp, MemFs};
use kv_net::storage::inspect;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tokio::time::sleep;

use crate::cluster::{SimCluster, DATA_DIR};

/// The disk faults of one run, and what they damaged.
#[derive(Debug, Default)]
pub struct DiskNemesis {
    /// Node -> the checker's event count when it was last damaged.
    marks: BTreeMap<u64, u64>,
    /// Nodes whose disk is full.
    full: BTreeSet<u64>,
}

impl DiskNemesis {
    /// No faults yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Nodes that may have lost what they acknowledged, now.
    pub fn damaged(&self, cluster: &SimCluster) -> BTreeSet<u64> {
        cluster
            .ids()
            .into_iter()
            .filter(|&id| self.is_damaged(cluster, id))
            .collect()
    }

    fn is_damaged(&self, cluster: &SimCluster, id: u64) -> bool {
        let checker = &cluster.checker;
        let unrepaired = self
            .marks
            .get(&id)
            .is_some_and(|&at| checker.standing_since(id, at) != Some(Standing::Voter));
        // Up or down: a node whose disk says it is recovering would come
        // back so from any restart, even if it reported itself a voter (it
        // may have, with the write that records it failing, e.g. on a full
        // disk: seed 2108 with SIM_FAULTS=Disk,CrashAtDiskOp,KillAny,
        // RestartAll,TransferLeader,Heal replaced a second disk then).
        let doomed = cluster.disk(id).is_some_and(would_recover);
        unrepaired || checker.not_voters().contains(&id) || doomed
    }

    /// Whether `victim` may be damaged without damaging a majority.
    fn may_damage(&self, cluster: &SimCluster, victim: u64) -> bool {
        let damaged = self.damaged(cluster);
        let minority = (cluster.ids().len() - 1) / 2;
        !damaged.contains(&victim) && damaged.len() < minority
    }

    /// Injects one disk fault on `victim`.
    pub async fn strike(&mut self, cluster: &mut SimCluster, victim: u64, rng: &mut ChaCha8Rng) {
        match rng.random_range(0..6) {
            0 => page_cache_then_power_loss(cluster, victim, rng).await,
            1..=3 => {
                if self.may_damage(cluster, victim) {
                    self.damage(cluster, victim, rng);
                }
            }
            4 => self.failing_io(cluster, victim, rng),
            _ => self.fill_or_free(cluster, victim, rng),
        }
    }

    /// A replaced disk or bit rot on `victim` (down while it happens).
    fn damage(&mut self, cluster: &mut SimCluster, victim: u64, rng: &mut ChaCha8Rng) {
        cluster.kill(victim, rng.random());
        let Some(disk) = cluster.disk(victim).cloned() else {
            return;
        };
        let what = match rng.random_range(0..3) {
            0 => {
                disk.wipe();
                "disk replaced".to_string()
            }
            kind => match rot(&disk, kind == 2, rng) {
                Some(where_) => format!("bit rot in {where_}"),
                None => return,
            },
        };
        self.marks.insert(victim, cluster.checker.now());
        cluster.checker.note(&format!("n{victim}: {what}"));
        cluster.restart(victim);
    }

    fn fill_or_free(&mut self, cluster: &SimCluster, victim: u64, rng: &mut ChaCha8Rng) {
        let Some(disk) = cluster.disk(victim) else {
            return;
        };
        if self.full.remove(&victim) {
            disk.set_capacity(None);
            cluster.checker.note(&format!("n{victim}: space freed"));
        } else {
            let room = rng.random_range(0..32 << 10);
            disk.set_capacity(Some(disk.used_bytes() + room));
            self.full.insert(victim);
            cluster
                .checker
                .note(&format!("n{victim}: disk full ({room} bytes left)"));
        }
    }

    /// Every disk works again.
    pub fn heal(&mut self, cluster: &SimCluster) {
        for id in cluster.ids() {
            if let Some(disk) = cluster.disk(id) {
                disk.set_faults(DiskFaults::default());
            }
        }
        self.full.clear();
    }
}

/// A process crash keeps the page cache; the node comes back and later
/// loses power, which drops whatever was never synced.
async fn page_cache_then_power_loss(cluster: &mut SimCluster, victim: u64, rng: &mut ChaCha8Rng) {
    cluster.kill_process(victim);
    sleep(Duration::from_millis(rng.random_range(1..300))).await;
    cluster.restart(victim);
    sleep(Duration::from_millis(rng.random_range(1..500))).await;
    cluster.kill(victim, rng.random());
}

/// The next one to three writes, fsyncs or renames fail with EIO.
/// EIO on `victim`'s next writes, fsyncs or renames. Failing fsyncs may
/// damage (see the table above), so they count as damage and go only
/// where a minority stays intact.
impl DiskNemesis {
    fn failing_io(&mut self, cluster: &SimCluster, victim: u64, rng: &mut ChaCha8Rng) {
        let Some(disk) = cluster.disk(victim) else {
            return;
        };
        let mut op = [DiskOp::Write, DiskOp::Sync, DiskOp::Rename][rng.random_range(0..3)];
        let times = rng.random_range(1..=3);
        if op == DiskOp::Sync {
            if self.may_damage(cluster, victim) {
                self.marks.insert(victim, cluster.checker.now());
            } else {
                op = DiskOp::Write;
            }
        }
        disk.fail_next(op, times);
        cluster
            .checker
            .note(&format!("n{victim}: next {times} {op:?} fail with EIO"));
    }
}

/// Flips one bit in a WAL segment (or a snapshot file, if `snapshot` and
/// there is one). Returns which file, if there was any to damage.
fn rot(disk: &MemFs, snapshot: bool, rng: &mut ChaCha8Rng) -> Option<String> {
    let files: Vec<_> = disk
        .files_in(Path::new(DATA_DIR))
        .into_iter()
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let snap = name.starts_with("snap-") && name.ends_with(".snap");
            let wal = name.starts_with("wal-") && name.ends_with(".log");
            if snapshot {
                snap
            } else {
                wal
            }
        })
        .filter(|p| disk.len(p).is_some_and(|l| l > 0))
        .collect();
    let path = files.get(rng.random_range(0..files.len().max(1)))?;
    let len = disk.len(path)?;
    let offset = rng.random_range(0..len);
    disk.corrupt(path, offset, rng.random_range(0..8)).ok()?;
    let name = path.file_name()?.to_string_lossy().into_owned();
    Some(format!("{name} at {offset}"))
}

/// Whether a node starting from this disk would not start as a voter.
fn would_recover(disk: &MemFs) -> bool {
    match inspect(disk, Path::new(DATA_DIR)) {
        Ok(i) => i.found != Found::Intact || i.hard_state.recovering,
        Err(_) => true,
    }
}
