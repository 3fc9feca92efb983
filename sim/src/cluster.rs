//! A simulated cluster: real `kv-net` nodes on madsim nodes (one IP each),
//! each with a simulated disk the harness keeps across kills.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use kv_engine::raft::ReadMode;
use kv_net::fs::MemFs;
use kv_net::node::events::Events;
use kv_net::node::{Member, NodeConfig};
use kv_net::server::Node;
use kv_net::transport::{AppendFilter, LinkSwitches, NetFaults};
use madsim::runtime::{Handle, NodeHandle};

use crate::invariants::InvariantChecker;

/// Client port of every simulated node.
pub const CLIENT_PORT: u16 = 7000;
/// Peer port of every simulated node.
pub const PEER_PORT: u16 = 7100;
/// Where each node keeps its data, on its own simulated disk.
pub const DATA_DIR: &str = "/data";

/// The address of node `id` (ids start at 1).
pub fn node_ip(id: u64) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, id as u8))
}

/// One simulated member: its madsim node and its disk.
pub struct SimNode {
    /// The madsim node running it.
    pub handle: NodeHandle,
    /// Its disk, kept by the harness so it survives kills.
    pub disk: MemFs,
    /// Whether it is currently killed.
    pub down: bool,
    /// Whether it is currently paused.
    pub paused: bool,
    /// Faults the nemesis switches on its links.
    pub switches: Arc<LinkSwitches>,
}

/// A running simulated cluster.
pub struct SimCluster {
    /// Members by id.
    pub nodes: BTreeMap<u64, SimNode>,
    /// The invariant checker every node reports to.
    pub checker: Arc<InvariantChecker>,
    /// Client addresses of all members.
    pub client_addrs: Vec<SocketAddr>,
    /// Hosts the nemesis made so far (each needs an address of its own).
    pub extra_hosts: u64,
}

/// How to build the cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Number of nodes.
    pub size: u64,
    /// Faults injected by each node's transport.
    pub net_faults: NetFaults,
    /// Snapshot every this many applied entries (small, so compaction and
    /// InstallSnapshot happen in every run).
    pub snapshot_entries: u64,
    /// WAL segment size (small, so rotation happens).
    pub segment_bytes: u64,
    /// Longest simulated fsync (a crash meanwhile loses the write).
    pub disk_latency_max: Duration,
    /// Entries per append (small: catch-up takes many round trips).
    pub max_append_entries: usize,
    /// Bytes of committed entries applied per step, if not the default
    /// (small: the apply lags the commit across steps).
    pub max_apply_bytes: Option<usize>,
    /// Whether nodes run a pre-vote round before an election.
    pub pre_vote: bool,
    /// How leaders confirm leadership before reads.
    pub read_mode: ReadMode,
    /// Each node's clock rate (1.0: true time), by id from 1: its ticks
    /// last `TICK / rate`. Missing nodes run true.
    pub clock_rates: Vec<f64>,
    /// Disk bandwidth, shared by the WAL and snapshots (0: no limit).
    pub disk_bytes_per_sec: u64,
    /// One node whose fsyncs take up to this long instead (a leader on it
    /// commits with its followers' copies before its own is durable).
    pub slow_disk: Option<(u64, Duration)>,
}

impl SimCluster {
    /// Starts `cfg.size` nodes.
    pub fn start(cfg: &ClusterConfig, checker: Arc<InvariantChecker>) -> SimCluster {
        let handle = Handle::current();
        let members: BTreeMap<u64, Member> = (1..=cfg.size)
            .map(|id| {
                let ip = node_ip(id);
                (
                    id,
                    Member {
                        peer_addr: SocketAddr::new(ip, PEER_PORT),
                        client_addr: SocketAddr::new(ip, CLIENT_PORT),
                    },
                )
            })
            .collect();
        let mut nodes = BTreeMap::new();
        for id in 1..=cfg.size {
            let disk = MemFs::new();
            let mut node_cfg = NodeConfig::new(id, members.clone(), PathBuf::from(DATA_DIR));
            node_cfg.snapshot_entries = cfg.snapshot_entries;
            node_cfg.segment_bytes = cfg.segment_bytes;
            let switches = Arc::new(LinkSwitches::default());
            node_cfg.net_faults = NetFaults {
                switches: Some(switches.clone()),
                ..cfg.net_faults.clone()
            };
            node_cfg.seed = handle.seed().wrapping_add(id);
            node_cfg.client.request_timeout = Duration::from_secs(2);
            node_cfg.events = Events(Some(checker.clone()));
            node_cfg.disk_latency_max = match cfg.slow_disk {
                Some((slow, latency)) if slow == id => latency,
                _ => cfg.disk_latency_max,
            };
            node_cfg.disk_bytes_per_sec = cfg.disk_bytes_per_sec;
            node_cfg.max_append_entries = cfg.max_append_entries;
            node_cfg.pre_vote = cfg.pre_vote;
            node_cfg.read_mode = cfg.read_mode;
            let rate = cfg.clock_rates.get(id as usize - 1).copied().unwrap_or(1.0);
            node_cfg.tick = node_cfg.tick.div_f64(rate);
            if let Some(bytes) = cfg.max_apply_bytes {
                node_cfg.max_apply_bytes = bytes;
            }
            let fs = disk.clone();
            let checker_for_node = checker.clone();
            let node = handle
                .create_node()
                .name(format!("n{id}"))
                .ip(node_ip(id))
                .init(move || {
                    let cfg = node_cfg.clone();
                    let fs = fs.clone();
                    let checker = checker_for_node.clone();
                    async move {
                        // A node that cannot start or stops on its own has
                        // found damage it should never have caused.
                        match Node::start(cfg, fs).await {
                            Ok(node) => {
                                if let Err(e) = node.wait().await {
                                    checker.violation(&format!("n{id} stopped: {e}"));
                                }
                            }
                            Err(e) => checker.violation(&format!("n{id} failed to start: {e}")),
                        }
                    }
                })
                .build();
            nodes.insert(
                id,
                SimNode {
                    handle: node,
                    disk,
                    down: false,
                    paused: false,
                    switches,
                },
            );
        }
        let client_addrs = members.values().map(|m| m.client_addr).collect();
        SimCluster {
            nodes,
            checker,
            client_addrs,
            extra_hosts: 0,
        }
    }

    /// Kills node `id`: its unsynced writes are lost (the last may be torn).
    pub fn kill(&mut self, id: u64, tear_seed: u64) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        if node.down {
            return;
        }
        if node.paused {
            // madsim drops a paused node's queued tasks in an order that is
            // not reproducible; resuming first keeps kills deterministic.
            Handle::current().resume(node.handle.id());
        }
        Handle::current().kill(node.handle.id());
        node.disk.release_locks();
        let lost = node.disk.crash(tear_seed);
        node.down = true;
        node.paused = false;
        self.checker.note(&format!(
            "kill n{id} ({} unsynced bytes lost, {} kept as a torn tail)",
            lost.unsynced_bytes - lost.torn_bytes_kept,
            lost.torn_bytes_kept
        ));
    }

    /// Kills the process of node `id` but not the machine: the page cache
    /// survives, so writes it never synced are still readable after a
    /// restart (and lost only at a later power loss).
    pub fn kill_process(&mut self, id: u64) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        if node.down {
            return;
        }
        if node.paused {
            Handle::current().resume(node.handle.id());
        }
        Handle::current().kill(node.handle.id());
        node.disk.release_locks();
        node.down = true;
        node.paused = false;
        self.checker
            .note(&format!("kill process n{id} (page cache kept)"));
    }

    /// Replaces the disk of a killed node with an empty one.
    pub fn replace_disk(&mut self, id: u64) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        if !node.down {
            return;
        }
        node.disk.wipe();
        self.checker.note(&format!("replace disk of n{id}"));
    }

    /// Kills `id` (if any) with a torn-write seed drawn from `rng`.
    pub fn kill_if_some(&mut self, id: Option<u64>, rng: &mut impl rand::Rng) {
        if let Some(id) = id {
            self.kill(id, rng.random());
        }
    }

    /// Restarts a killed node from its disk.
    pub fn restart(&mut self, id: u64) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        if !node.down {
            return;
        }
        Handle::current().restart(node.handle.id());
        node.down = false;
        self.checker.note(&format!("restart n{id}"));
    }

    /// Pauses a node (it keeps its state but runs nothing).
    pub fn pause(&mut self, id: u64) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        if node.down || node.paused {
            return;
        }
        Handle::current().pause(node.handle.id());
        node.paused = true;
        self.checker.note(&format!("pause n{id}"));
    }

    /// Resumes a paused node.
    pub fn resume(&mut self, id: u64) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        if !node.paused {
            return;
        }
        Handle::current().resume(node.handle.id());
        node.paused = false;
        self.checker.note(&format!("resume n{id}"));
    }

    /// Sets what happens to the appends node `id` sends.
    pub fn filter_appends(&self, id: u64, filter: AppendFilter) {
        if let Some(node) = self.nodes.get(&id) {
            node.switches
                .append_filter
                .store(filter as u8, Ordering::Relaxed);
        }
    }

    /// Holds back (true) or releases the TimeoutNow messages node `id` sends.
    pub fn hold_timeout_now(&self, id: u64, on: bool) {
        if let Some(node) = self.nodes.get(&id) {
            node.switches.hold_timeout_now.store(on, Ordering::Relaxed);
        }
    }

    /// Holds back every message node `from` sends to `to` (None: releases
    /// them; they are then delivered).
    pub fn hold_messages(&self, from: u64, to: Option<u64>) {
        if let Some(node) = self.nodes.get(&from) {
            node.switches
                .hold_to
                .store(to.unwrap_or(0), Ordering::Relaxed);
        }
    }

    /// Whether node `id` is killed.
    pub fn is_down(&self, id: u64) -> bool {
        self.nodes.get(&id).is_some_and(|n| n.down)
    }

    /// The disk of node `id`.
    pub fn disk(&self, id: u64) -> Option<&MemFs> {
        self.nodes.get(&id).map(|n| &n.disk)
    }

    /// Ids of all members.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// The madsim node id of member `id`.
    pub fn madsim_id(&self, id: u64) -> Option<madsim::task::NodeId> {
        self.nodes.get(&id).map(|n| n.handle.id())
    }
}
