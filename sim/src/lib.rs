//! The simulation harness: real `kv-net` nodes on madsim, a simulated disk
//! (`kv_net::fs::MemFs`), a nemesis, a workload and the checkers.
//!
//! | module | what | builds |
//! |---|---|---|
//! | `history` | operations with invoke/return order | always |
//! | `linearizability` | Wing-Gong-Lowe checker, per key | always |
//! | `invariants` | Raft safety from node events | always |
//! | `swarm` | each seed's own mix of faults and intensities | always |
//! | `cluster` | madsim nodes running `kv_net::server::Node` | `--cfg madsim` |
//! | `workload` | clients on the real text protocol | `--cfg madsim` |
//! | `scenario` | one run: faults, heal, checks | `--cfg madsim` |
//! | `disk_faults` | page cache, bit rot, replaced disks, EIO, ENOSPC on a minority | `--cfg madsim` |

pub mod history;
pub mod invariants;
pub mod linearizability;
pub mod swarm;

#[cfg(madsim)]
pub mod cluster;
#[cfg(madsim)]
pub mod disk_faults;
#[cfg(madsim)]
pub mod scenario;
#[cfg(madsim)]
pub mod workload;
