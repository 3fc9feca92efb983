//! One simulated run: a cluster, clients, a nemesis phase, a healing phase,
//! and the checks. Everything random is drawn from the madsim seed, so a
//! seed replays the same run bit for bit.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kv_engine::raft::{ReadMode, Role};
use kv_net::transport::{AppendFilter, NetFaults, HOLD_ALL};
use madsim::net::NetSim;
use madsim::runtime::Handle;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::time::{sleep, Instant};

use crate::cluster::{ClusterConfig, SimCluster};
use crate::disk_faults::DiskNemesis;
use crate::history::{HistoryRecorder, Input, Operation, Output};
use crate::invariants::{InvariantChecker, SnapshotSaved};
use crate::linearizability::{check_history, CheckResult};
use crate::swarm::{Fault, FaultMix};
use crate::workload::{Client, WorkloadConfig};

/// What a run does.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Cluster size.
    pub nodes: u64,
    /// Concurrent clients.
    pub clients: u64,
    /// Simulated length of the fault phase.
    pub fault_phase: Duration,
    /// Simulated time allowed for convergence after healing.
    pub heal_deadline: Duration,
    /// Run the nemesis (off for a fault-free baseline).
    pub nemesis: bool,
    /// Keep a trace of role changes and faults (for snapshots).
    pub trace: bool,
    /// A fixed fault script instead of the random nemesis.
    pub script: Option<Script>,
    /// Bulk state loaded before the faults start, on a slow disk (None:
    /// drawn from the seed for nemesis runs, a quarter of which get one).
    pub load: Option<Load>,
    /// Only these nemesis faults, with no message faults (None: the seed's
    /// whole mix). `SIM_FAULTS=CrashAtDiskOp` in the sweep tests.
    pub only_faults: Option<Vec<Fault>>,
}

/// A state large enough, on a disk slow enough, that every snapshot takes
/// many ticks to write, send and install.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    /// Keys loaded (100-byte values) before the clients start.
    pub keys: u64,
    /// The disk's bandwidth, shared by the WAL and snapshots.
    pub disk_bytes_per_sec: u64,
}

impl Load {
    /// Extra time a heal may take to move the loaded state through the
    /// slow disks: written by the leader, read for each follower that needs
    /// it and written by each, several times over (repairs and elections
    /// in between). Measured need on 5 nodes with two damaged: about 2.5x
    /// one pass per node.
    pub fn repair_allowance(&self, nodes: u64) -> Duration {
        const BYTES_PER_KEY: u64 = 120;
        let one_pass = (self.keys * BYTES_PER_KEY) as f64 / self.disk_bytes_per_sec.max(1) as f64;
        Duration::from_secs_f64(4.0 * one_pass * nodes.saturating_sub(1) as f64)
    }

    /// Whether a nemesis run of `seed` is a snapshot-heavy one, and its load.
    /// Drawn from its own generator so the other runs stay as they were.
    fn for_seed(seed: u64) -> Option<Load> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x10ad_10ad);
        (rng.random_range(0..4) == 0).then(|| Load {
            keys: rng.random_range(2_000..=10_000),
            disk_bytes_per_sec: rng.random_range(256 << 10..=2 << 20),
        })
    }
}

/// Fixed fault sequences whose traces are kept as snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Script {
    /// The leader is killed, a new one takes over, the old one restarts.
    LeaderCrash,
    /// The leader is cut off from everyone, then the network heals.
    PartitionHeal,
    /// A follower is killed while writes are unsynced (slow fsync), so its
    /// WAL tail is lost or torn, and it restarts from what survived.
    TornWalTail,
    /// A follower's process dies while its writes sit in the page cache
    /// and comes back at once (the other follower is cut off, so the
    /// leader commits only with it); once the leader has committed with
    /// its acknowledgment, it loses power and the leader dies. A node that
    /// trusts its page cache at start-up has acknowledged a write it lost.
    PageCacheLoss,
    /// The leader's next fsync fails (EIO): it must hand leadership over at
    /// once (the trace notes how long the cluster went without one) and
    /// rejoin once its disk takes writes again.
    LeaderDiskFails,
    /// The leader's disk fills up (ENOSPC); three seconds later space is
    /// freed: the node must rejoin by itself.
    DiskFull,
    /// A majority of the nodes lose their disks (replaced, or rotten) at
    /// once. The cluster must stop serving (no operation started after the
    /// damage succeeds) and never lose or invent data; the damaged nodes
    /// stay recovering. Checked instead of convergence.
    MajorityDamage,
    /// One follower is cut off, so the leader commits only with the other;
    /// that one's disk is then replaced by an empty one, and the leader dies
    /// as the network heals. A wiped node that votes loses those commits.
    ReplacedDisk,
    /// A follower is cut off for 6 s while the clients write, so the leader
    /// compacts past it (it keeps the log for a silent follower 20 election
    /// timeouts, 3 s by default); once healed, with the writes still going on, it
    /// must catch up (apply what was committed at the heal) before the
    /// clients stop. With a loaded state on a slow disk, a snapshot takes
    /// longer to send than to take: a leader that keeps neither the
    /// snapshot in transfer nor the log after it starts the transfer over
    /// for as long as the writes last.
    FollowerRejoinsUnderWrites,
}

impl Scenario {
    /// The CI default for a cluster of `nodes`.
    pub fn standard(nodes: u64) -> Self {
        Scenario {
            nodes,
            clients: 4,
            fault_phase: Duration::from_secs(20),
            heal_deadline: Duration::from_secs(30),
            nemesis: true,
            trace: false,
            script: None,
            load: None,
            only_faults: None,
        }
    }
}

/// What a passing run reports.
#[derive(Debug)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Operations recorded.
    pub ops: usize,
    /// Operations whose outcome is unknown.
    pub indeterminate: usize,
    /// Node events checked.
    pub events: u64,
    /// The trace (empty unless asked for).
    pub trace: String,
    /// Simulated time the run took.
    pub simulated: Duration,
    /// The leader of each term that had one.
    pub leaders: BTreeMap<u64, u64>,
    /// Every local snapshot made durable.
    pub snapshots: Vec<SnapshotSaved>,
}

/// Runs `scenario` under the current madsim runtime; Err describes the
/// first violated property.
pub async fn run(scenario: Scenario) -> Result<Report, String> {
    let handle = Handle::current();
    let seed = handle.seed();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let start = Instant::now();
    let clock_start = start;
    let checker = Arc::new(InvariantChecker::new(
        move || clock_start.elapsed().as_millis() as u64,
        scenario.trace,
    ));

    let mix = match &scenario.only_faults {
        Some(kinds) => FaultMix::for_seed(seed).only(kinds),
        None => FaultMix::for_seed(seed),
    };
    let (cluster_cfg, load) = cluster_config(&scenario, &mix, &mut rng, seed, &checker);
    let mut scenario = scenario;
    if let Some(load) = load {
        scenario.heal_deadline += load.repair_allowance(scenario.nodes);
    }
    let mut cluster = SimCluster::start(&cluster_cfg, checker.clone());
    if let Some(load) = load {
        preload(&cluster, load, seed).await?;
        checker.note(&format!("loaded {} keys", load.keys));
    }

    // Clients on their own simulated hosts.
    let history = Arc::new(HistoryRecorder::new());
    let stop_at = Instant::now() + scenario.fault_phase;
    let (client_tasks, client_nodes) =
        start_clients(&handle, &cluster, scenario.clients, seed, stop_at, &history);

    let mut disks = DiskNemesis::new();
    let mut damaged_at = None;
    if let Some(script) = scenario.script {
        damaged_at = run_script(&mut cluster, script, stop_at, &history).await;
    } else if scenario.nemesis {
        nemesis(&mut cluster, &mut disks, &mix, &mut rng, stop_at, &history).await;
    } else {
        sleep(scenario.fault_phase).await;
    }

    disks.heal(&cluster);
    heal_all(&mut cluster);
    checker.note("heal all");
    // Outstanding client operations end within their timeouts.
    for t in client_tasks {
        let _ = t.await;
    }
    let result = match damaged_at {
        Some(mark) => {
            finish_stopped(&scenario, &cluster, &checker, &history, mark, seed, start).await
        }
        None => {
            finish(
                &scenario, &cluster, &handle, &checker, &history, seed, start,
            )
            .await
        }
    };
    // Kill every simulated node so their tasks are dropped now: tasks that
    // wait on each other through channels would otherwise keep each other
    // (and every simulated disk) alive after the runtime ends, and a long
    // sweep in one process would run out of memory.
    for id in cluster.ids() {
        cluster.kill(id, 0);
    }
    for node in client_nodes {
        handle.kill(node);
    }
    sleep(Duration::from_millis(1)).await;
    result
}

/// The cluster a run starts (drawn from the seed's generator, always in
/// the same order) and the load it carries, if any.
fn cluster_config(
    scenario: &Scenario,
    mix: &FaultMix,
    rng: &mut ChaCha8Rng,
    seed: u64,
    checker: &InvariantChecker,
) -> (ClusterConfig, Option<Load>) {
    let net_faults = if scenario.nemesis && scenario.script.is_none() {
        checker.note(&mix.to_string());
        mix.net.clone()
    } else {
        NetFaults::default()
    };
    let cluster_cfg = ClusterConfig {
        size: scenario.nodes,
        net_faults,
        snapshot_entries: rng.random_range(20..200),
        segment_bytes: rng.random_range(2048..32768),
        disk_latency_max: if matches!(
            scenario.script,
            Some(Script::TornWalTail | Script::PageCacheLoss)
        ) {
            Duration::from_millis(20)
        } else {
            Duration::from_micros(rng.random_range(100..5000))
        },
        max_append_entries: rng.random_range(1..=16),
        max_apply_bytes: mix.max_apply_bytes,
        pre_vote: mix.pre_vote,
        read_mode: match mix.lease_drift_percent {
            Some(_) => ReadMode::Lease,
            None => ReadMode::Index,
        },
        // Rates within ± half the drift: any two clocks at most the drift apart.
        clock_rates: (0..scenario.nodes)
            .map(|_| {
                let half = mix.lease_drift_percent.unwrap_or(0) as f64 / 200.0;
                1.0 + rng.random_range(-half..=half)
            })
            .collect(),
        disk_bytes_per_sec: 0,
        slow_disk: None,
    };
    let slow_disk = (scenario.nemesis && scenario.script.is_none())
        .then_some(mix.slow_disk)
        .flatten()
        .map(|latency| (1 + seed % scenario.nodes, latency));
    let load = scenario.load.or_else(|| {
        (scenario.nemesis && scenario.script.is_none())
            .then(|| Load::for_seed(seed))
            .flatten()
    });
    let cluster_cfg = ClusterConfig {
        disk_bytes_per_sec: load.map_or(0, |l| l.disk_bytes_per_sec),
        slow_disk,
        ..cluster_cfg
    };
    (cluster_cfg, load)
}

/// Starts `clients` workload clients, each on a simulated host of its own:
/// their tasks and their hosts.
fn start_clients(
    handle: &Handle,
    cluster: &SimCluster,
    clients: u64,
    seed: u64,
    stop_at: Instant,
    history: &Arc<HistoryRecorder>,
) -> (Vec<madsim::task::JoinHandle<()>>, Vec<madsim::task::NodeId>) {
    let mut client_tasks = Vec::new();
    let mut client_nodes = Vec::new();
    for c in 1..=clients {
        let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 1, c as u8));
        let node = handle
            .create_node()
            .name(format!("client{c}"))
            .ip(ip)
            .build();
        let cfg = WorkloadConfig {
            keys: 5,
            request_timeout: Duration::from_secs(1),
            stop_at,
            think_max: Duration::from_millis(20),
        };
        let client = Client::new(c, cluster.client_addrs.clone(), seed, cfg, history.clone());
        client_tasks.push(node.spawn(client.run()));
        client_nodes.push(node.id());
    }

    (client_tasks, client_nodes)
}

/// Exactly once: each counter (only INCR by 1 writes it) must hold at least
/// the increments acknowledged and at most those plus the ones whose
/// outcome stayed unknown. A write sent again after an unknown outcome and
/// applied twice shows as one too many.
async fn check_counters_exactly_once(
    cluster: &SimCluster,
    handle: &Handle,
    ops: &[crate::history::Operation],
    seed: u64,
) -> Result<(), String> {
    use crate::workload::COUNTERS;
    let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 3, 9));
    let host = handle.create_node().name("counter-probe").ip(ip).build();
    let cfg = WorkloadConfig {
        keys: 1,
        request_timeout: Duration::from_secs(1),
        stop_at: Instant::now(),
        think_max: Duration::ZERO,
    };
    let addrs = cluster.client_addrs.clone();
    let read = host
        .spawn(async move {
            let mut client = Client::new(998, addrs, seed, cfg, Arc::new(HistoryRecorder::new()));
            let mut values = Vec::new();
            for c in 0..COUNTERS {
                let key = Bytes::from(format!("c{c}"));
                values.push(client.once_at(0, Input::Get { key }).await);
            }
            values
        })
        .await
        .unwrap_or_default();
    handle.kill(host.id());
    for (c, value) in read.into_iter().enumerate() {
        let key = format!("c{c}");
        let held = match value {
            Some(Output::Value(v)) => String::from_utf8_lossy(&v)
                .parse::<u64>()
                .unwrap_or(u64::MAX),
            Some(Output::NotFound) => 0,
            other => {
                return Err(format!(
                    "exactly-once: reading counter {key} gave {other:?}"
                ))
            }
        };
        let incrs = ops.iter().filter(
            |o| matches!(&o.input, Input::Incr { key: k, .. } if k.as_ref() == key.as_bytes()),
        );
        let acked = incrs
            .clone()
            .filter(|o| matches!(o.output, Some(Output::Int(_))))
            .count() as u64;
        let unknown = incrs.filter(|o| o.output.is_none()).count() as u64;
        if held < acked || held > acked + unknown {
            return Err(format!(
                "exactly-once: counter {key} holds {held} after {acked} acknowledged increments and {unknown} of unknown outcome"
            ));
        }
    }
    Ok(())
}

/// Logs (at info, shown with `SIM_LOG=info`) every operation on the key a
/// linearizability failure names, in invocation order, with its times.
fn log_key_history(ops: &[crate::history::Operation], why: &str) {
    let Some(key) = why.strip_prefix("key \"").and_then(|r| r.split('"').next()) else {
        return;
    };
    let mut on_key: Vec<_> = ops
        .iter()
        .filter(|o| o.input.keys().iter().any(|k| k.as_ref() == key.as_bytes()))
        .collect();
    on_key.sort_by_key(|o| o.invoke);
    for o in on_key {
        tracing::info!(
            client = o.client,
            invoked_ms = o.at_ms.0,
            returned_ms = o.at_ms.1,
            "history of {key}: {:?} -> {:?}",
            o.input,
            o.output
        );
    }
}

/// When a majority of disks was damaged: the history's mark and the time.
#[derive(Debug, Clone, Copy)]
struct Damage {
    mark: u64,
    at_ms: u64,
}

/// The longest a leader's lease lasts (one election timeout of the nodes'
/// default config, 15 ticks of 10 ms; drift within bounds stretches it
/// by a few percent, covered by the factor of 2 where it is used).
const LEASE_BOUND_MS: u64 = 150;

/// After a majority was damaged: the cluster must have stopped serving,
/// with every property but liveness intact.
async fn finish_stopped(
    scenario: &Scenario,
    cluster: &SimCluster,
    checker: &InvariantChecker,
    history: &HistoryRecorder,
    damaged_at: Damage,
    seed: u64,
    start: Instant,
) -> Result<Report, String> {
    // Give a healed cluster every chance to serve again: it must not.
    sleep(scenario.heal_deadline / 3).await;
    let violations = checker.violations();
    if let Some(v) = violations.first() {
        return Err(format!("invariant violated: {v}"));
    }
    let not_voters = checker.not_voters();
    let majority = cluster.ids().len() / 2 + 1;
    if not_voters.len() < majority {
        return Err(format!(
            "a damaged majority must stay recovering; not voters: {not_voters:?}"
        ));
    }
    let ops = history.operations();
    // A leader that kept its data may still answer reads on its lease for
    // up to an election timeout (stretched by clock drift): those reads
    // are served from intact data and still checked for linearizability
    // below. Nothing else may be answered.
    let lease_ends_ms = damaged_at.at_ms + 2 * LEASE_BOUND_MS;
    let on_lease =
        |o: &Operation| matches!(o.input, Input::Get { .. }) && o.at_ms.1 <= lease_ends_ms;
    if let Some(served) = ops
        .iter()
        .find(|o| o.invoke > damaged_at.mark && o.output.is_some() && !on_lease(o))
    {
        return Err(format!("served after a majority lost its data: {served:?}"));
    }
    let indeterminate = ops.iter().filter(|o| o.output.is_none()).count();
    match check_history(&ops) {
        CheckResult::Ok => {}
        CheckResult::Illegal(why) => return Err(format!("history is not linearizable: {why}")),
        CheckResult::Unknown => return Err("linearizability check gave up".into()),
    }
    Ok(Report {
        seed,
        ops: ops.len(),
        indeterminate,
        events: checker.event_count(),
        trace: checker.trace(),
        simulated: start.elapsed(),
        leaders: checker.leaders(),
        snapshots: checker.snapshots_saved(),
    })
}

/// Liveness, invariants and linearizability, once the faults are over.
async fn finish(
    scenario: &Scenario,
    cluster: &SimCluster,
    handle: &Handle,
    checker: &InvariantChecker,
    history: &HistoryRecorder,
    seed: u64,
    start: Instant,
) -> Result<Report, String> {
    let with_trace = |e: String| {
        if scenario.trace {
            format!("{e}\ntrace:\n{}", checker.trace())
        } else {
            e
        }
    };
    let converged = converge(
        cluster,
        handle,
        seed,
        scenario.clients,
        scenario.heal_deadline,
    )
    .await;
    if let Err(e) = converged {
        let violations = checker.violations();
        return Err(with_trace(format!("{e}; violations: {violations:?}")));
    }

    let violations = checker.violations();
    if let Some(v) = violations.first() {
        return Err(with_trace(format!(
            "invariant violated: {v} ({} violations)",
            violations.len()
        )));
    }
    let ops = history.operations();
    let indeterminate = ops.iter().filter(|o| o.output.is_none()).count();
    match check_history(&ops) {
        CheckResult::Ok => {}
        CheckResult::Illegal(why) => {
            log_key_history(&ops, &why);
            return Err(with_trace(format!("history is not linearizable: {why}")));
        }
        CheckResult::Unknown => {
            return Err(with_trace(format!(
            "linearizability check gave up (search budget; {} ops, {indeterminate} indeterminate)",
            ops.len()
        )))
        }
    }
    check_counters_exactly_once(cluster, handle, &ops, seed)
        .await
        .map_err(with_trace)?;
    Ok(Report {
        seed,
        ops: ops.len(),
        indeterminate,
        events: checker.event_count(),
        trace: checker.trace(),
        simulated: start.elapsed(),
        leaders: checker.leaders(),
        snapshots: checker.snapshots_saved(),
    })
}

/// Writes `load.keys` keys in batches from a client host of its own,
/// before the faults start.
async fn preload(cluster: &SimCluster, load: Load, seed: u64) -> Result<(), String> {
    let node = Handle::current()
        .create_node()
        .name("loader")
        .ip(IpAddr::V4(Ipv4Addr::new(10, 0, 3, 1)))
        .build();
    let cfg = WorkloadConfig {
        keys: 0,
        request_timeout: Duration::from_secs(2),
        stop_at: Instant::now(),
        think_max: Duration::ZERO,
    };
    let history = Arc::new(HistoryRecorder::new());
    let mut client = Client::new(0, cluster.client_addrs.clone(), seed, cfg, history);
    let deadline = Instant::now() + Duration::from_secs(120);
    let loaded = node
        .spawn(async move { client.load(load.keys, 100, deadline).await })
        .await;
    match loaded {
        Ok(true) => Ok(()),
        _ => Err(format!("loading {} keys did not finish in time", load.keys)),
    }
}

/// Injects faults until `until`, drawn by the seed's mix (`swarm.rs`):
/// kills and restarts, partitions of random halves, an isolated node,
/// one-way links, pauses, disk faults on a minority (`disk_faults.rs`),
/// and heals.
async fn nemesis(
    cluster: &mut SimCluster,
    disks: &mut DiskNemesis,
    mix: &FaultMix,
    rng: &mut ChaCha8Rng,
    until: Instant,
    history: &Arc<HistoryRecorder>,
) {
    let net = NetSim::current();
    let ids = cluster.ids();
    let mut clogged: BTreeSet<(u64, u64)> = BTreeSet::new();
    while Instant::now() < until {
        sleep(Duration::from_millis(rng.random_range(50..1000))).await;
        let random = ids[rng.random_range(0..ids.len())];
        // Most faults aim at the leader: that is where Raft's hard cases are.
        let leader = cluster.checker.current_leader().unwrap_or(random);
        match mix.pick(rng) {
            Fault::KillLeader => cluster.kill(leader, rng.random()),
            // A new leader dies before its first entry spreads (Figure 8).
            Fault::KillNextLeader => kill_next_leader(cluster, rng).await,
            Fault::KillAny => cluster.kill(random, rng.random()),
            Fault::RestartAll => {
                for &id in &ids {
                    cluster.restart(id);
                }
            }
            Fault::Partition => {
                // Random halves.
                let mut side: Vec<u64> = ids
                    .iter()
                    .copied()
                    .filter(|_| rng.random_bool(0.5))
                    .collect();
                if side.is_empty() {
                    side.push(random);
                }
                for &a in &side {
                    for &b in ids.iter().filter(|b| !side.contains(b)) {
                        clog(cluster, &net, &mut clogged, a, b);
                        clog(cluster, &net, &mut clogged, b, a);
                    }
                }
                cluster.checker.note(&format!("partition {side:?}"));
            }
            Fault::Isolate => {
                let victim = if rng.random_bool(0.7) { leader } else { random };
                for &b in ids.iter().filter(|&&b| b != victim) {
                    clog(cluster, &net, &mut clogged, victim, b);
                    clog(cluster, &net, &mut clogged, b, victim);
                }
                cluster.checker.note(&format!("isolate n{victim}"));
            }
            Fault::Swizzle => swizzle(cluster, &net, &mut clogged, rng).await,
            Fault::Disk => disks.strike(cluster, random, rng).await,
            Fault::CrashAtPromise => crash_at_next_promise(cluster, random, rng).await,
            Fault::CrashAtDiskOp => crash_at_next_disk_op(cluster, random, rng).await,
            Fault::DeposedLeaderReturns => {
                deposed_leader_returns(cluster, &net, &mut clogged, rng).await
            }
            Fault::LeaseTrap if mix.lease_drift_percent.is_some() => {
                lease_trap(cluster, &net, &mut clogged, history, rng).await
            }
            Fault::LeaseTrap => {}
            Fault::TransferLeader => {
                let to = rng.random_bool(0.5).then_some(random);
                ask_transfer(cluster, leader, to);
            }
            Fault::OneWay => {
                let other = ids[rng.random_range(0..ids.len())];
                if other != random {
                    clog(cluster, &net, &mut clogged, random, other);
                    cluster
                        .checker
                        .note(&format!("one-way n{random} -> n{other}"));
                }
            }
            Fault::Pause => {
                if cluster.nodes.values().filter(|n| n.paused).count() == 0 {
                    cluster.pause(leader);
                } else {
                    for &id in &ids {
                        cluster.resume(id);
                    }
                }
            }
            Fault::Heal => {
                unclog_all(cluster, &net, &mut clogged);
                cluster.checker.note("heal network");
            }
        }
    }
    unclog_all(cluster, &net, &mut clogged);
}

/// Cuts `victim`'s power the moment it next hands the network a message
/// promising something durable (or saves a snapshot): whatever it had
/// queued for its disk but not synced is lost, as in a crash right after
/// the send. Correct code promises only what is already durable, so this
/// must cost nothing; a promise made early loses acknowledged data.
async fn crash_at_next_promise(cluster: &mut SimCluster, victim: u64, rng: &mut ChaCha8Rng) {
    let before = cluster.checker.crash_points(victim);
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        sleep(Duration::from_micros(200)).await;
        if cluster.checker.crash_points(victim) > before {
            cluster
                .checker
                .note(&format!("crash n{victim} at a durability promise"));
            cluster.kill(victim, rng.random());
            return;
        }
    }
}

/// Cuts `victim`'s power right after its next disk operation of a kind
/// drawn at random succeeds: after a write (a batch on the page cache, not
/// yet synced: the crash may tear it), after an fsync (durable, not yet
/// announced), or after a rename (a snapshot in place, the log not yet
/// compacted). From that moment every change its disk is asked for fails,
/// so nothing more reaches the disk before the power goes.
async fn crash_at_next_disk_op(cluster: &mut SimCluster, victim: u64, rng: &mut ChaCha8Rng) {
    use kv_net::fs::{DiskFaults, DiskOp};
    let Some(disk) = cluster.disk(victim).cloned() else {
        return;
    };
    let op = match rng.random_range(0..10) {
        0..=4 => DiskOp::Write,
        5..=7 => DiskOp::Sync,
        _ => DiskOp::Rename,
    };
    disk.set_faults(DiskFaults {
        dies_after_next: Some(op),
        ..disk.faults()
    });
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && !disk.is_dead() {
        sleep(Duration::from_micros(200)).await;
    }
    if disk.is_dead() {
        cluster
            .checker
            .note(&format!("crash n{victim} right after a {op:?}"));
        cluster.kill(victim, rng.random());
    }
    disk.set_faults(DiskFaults {
        dies_after_next: None,
        dies_after: None,
        ..disk.faults()
    });
}

/// Runs one fixed fault sequence until `until`. Returns when a majority
/// was damaged, if the script does that.
async fn run_script(
    cluster: &mut SimCluster,
    script: Script,
    until: Instant,
    history: &HistoryRecorder,
) -> Option<Damage> {
    let mut damaged_at = None;
    let net = NetSim::current();
    let ids = cluster.ids();
    let mut clogged = BTreeSet::new();
    sleep(Duration::from_secs(2)).await;
    let leader = cluster.checker.current_leader().unwrap_or(ids[0]);
    match script {
        Script::LeaderCrash => {
            cluster.kill(leader, 1);
            sleep(Duration::from_secs(3)).await;
            cluster.restart(leader);
        }
        Script::PartitionHeal => {
            isolate_for(cluster, &net, leader, Duration::from_secs(4)).await;
        }
        Script::TornWalTail => {
            let follower = ids.iter().copied().find(|&i| i != leader).unwrap_or(ids[0]);
            // With 20 ms fsyncs under load, a write is almost always in flight.
            cluster.kill(follower, 7);
            sleep(Duration::from_secs(1)).await;
            cluster.restart(follower);
        }
        Script::PageCacheLoss => page_cache_loss(cluster, &net, &mut clogged, leader).await,
        Script::ReplacedDisk => replaced_disk(cluster, &net, &mut clogged, leader).await,
        Script::FollowerRejoinsUnderWrites => {
            let follower = ids.iter().copied().find(|&i| i != leader).unwrap_or(ids[0]);
            isolate_for(cluster, &net, follower, Duration::from_secs(6)).await;
            catch_up_before(cluster, follower, until).await;
        }
        Script::LeaderDiskFails => {
            if let Some(disk) = cluster.disk(leader) {
                disk.fail_next(kv_net::fs::DiskOp::Sync, 1);
            }
            cluster
                .checker
                .note(&format!("n{leader}: next fsync fails with EIO"));
            note_next_leader(cluster, leader).await;
        }
        Script::DiskFull => {
            if let Some(disk) = cluster.disk(leader) {
                disk.set_capacity(Some(disk.used_bytes()));
            }
            cluster.checker.note(&format!("n{leader}: disk full"));
            note_next_leader(cluster, leader).await;
            sleep(Duration::from_secs(3)).await;
            if let Some(disk) = cluster.disk(leader) {
                disk.set_capacity(None);
            }
            cluster.checker.note(&format!("n{leader}: space freed"));
        }
        Script::MajorityDamage => {
            let victims: Vec<u64> = ids.iter().copied().take(ids.len() / 2 + 1).collect();
            for (i, &v) in victims.iter().enumerate() {
                cluster.kill(v, i as u64);
                if let Some(disk) = cluster.disk(v) {
                    disk.wipe();
                }
                cluster.checker.note(&format!("n{v}: disk replaced"));
            }
            damaged_at = Some(Damage {
                mark: history.mark(),
                at_ms: history.now_ms(),
            });
            for &v in &victims {
                cluster.restart(v);
            }
        }
    }
    let now = Instant::now();
    if until > now {
        sleep(until - now).await;
    }
    damaged_at
}

/// Cuts `node` off from every other node both ways for `how_long`, then
/// heals the network, noting both in the trace.
async fn isolate_for(cluster: &SimCluster, net: &NetSim, node: u64, how_long: Duration) {
    let mut clogged = BTreeSet::new();
    for b in cluster.ids().into_iter().filter(|&b| b != node) {
        clog(cluster, net, &mut clogged, node, b);
        clog(cluster, net, &mut clogged, b, node);
    }
    cluster.checker.note(&format!("isolate n{node}"));
    sleep(how_long).await;
    unclog_all(cluster, net, &mut clogged);
    cluster.checker.note("heal network");
}

/// Waits until `node` has applied what the cluster had committed when this
/// was called, and notes how long that took; a violation if that is not
/// by `until` (the clients write until then).
async fn catch_up_before(cluster: &SimCluster, node: u64, until: Instant) {
    let since = Instant::now();
    let target = cluster
        .ids()
        .iter()
        .map(|&i| cluster.checker.commit_of(i))
        .max()
        .unwrap_or(0);
    loop {
        let applied = cluster.checker.last_applied().get(&node).copied();
        if applied.unwrap_or(0) >= target {
            let ms = since.elapsed().as_millis();
            cluster
                .checker
                .note(&format!("n{node} caught up after {ms} ms"));
            return;
        }
        if Instant::now() >= until {
            cluster.checker.violation(&format!(
                "liveness: n{node} had not applied index {target} {} ms after rejoining, with the writes still going on (applied {applied:?})",
                since.elapsed().as_millis()
            ));
            return;
        }
        sleep(Duration::from_millis(10)).await;
    }
}

/// Waits (up to 5 s) until a node other than `old` leads, and notes in the
/// trace how long that took.
async fn note_next_leader(cluster: &SimCluster, old: u64) {
    let since = Instant::now();
    while since.elapsed() < Duration::from_secs(5) {
        match cluster.checker.current_leader() {
            Some(new) if new != old => {
                let ms = since.elapsed().as_millis();
                cluster
                    .checker
                    .note(&format!("new leader n{new} after {ms} ms"));
                return;
            }
            _ => sleep(Duration::from_millis(1)).await,
        }
    }
}

/// The steps of `Script::PageCacheLoss` (see there).
async fn page_cache_loss(
    cluster: &mut SimCluster,
    net: &NetSim,
    clogged: &mut BTreeSet<(u64, u64)>,
    leader: u64,
) {
    let ids = cluster.ids();
    let others: Vec<u64> = ids.iter().copied().filter(|&i| i != leader).collect();
    let (Some(&victim), Some(&bystander)) = (others.first(), others.get(1)) else {
        return;
    };
    for &o in &ids {
        if o != bystander {
            clog(cluster, net, clogged, bystander, o);
            clog(cluster, net, clogged, o, bystander);
        }
    }
    cluster.checker.note(&format!("isolate n{bystander}"));
    sleep(Duration::from_millis(300)).await;
    cluster.kill_process(victim);
    cluster.restart(victim);
    // Wait until the leader commits with the restarted follower's answers.
    let applied_at_restart = cluster.checker.last_applied().get(&leader).copied();
    let give_up = Instant::now() + Duration::from_secs(3);
    while Instant::now() < give_up
        && cluster.checker.last_applied().get(&leader).copied() == applied_at_restart
    {
        sleep(Duration::from_millis(1)).await;
    }
    for &o in &ids {
        if o != victim {
            clog(cluster, net, clogged, victim, o);
            clog(cluster, net, clogged, o, victim);
        }
    }
    cluster.checker.note(&format!("isolate n{victim}"));
    cluster.kill(victim, 11);
    cluster.kill(leader, 13);
    unclog_all(cluster, net, clogged);
    cluster.checker.note("heal network");
    cluster.restart(victim);
    sleep(Duration::from_secs(3)).await;
    cluster.restart(leader);
}

/// The steps of `Script::ReplacedDisk` (see there).
async fn replaced_disk(
    cluster: &mut SimCluster,
    net: &NetSim,
    clogged: &mut BTreeSet<(u64, u64)>,
    leader: u64,
) {
    let ids = cluster.ids();
    let others: Vec<u64> = ids.iter().copied().filter(|&i| i != leader).collect();
    let (Some(&victim), Some(&bystander)) = (others.first(), others.get(1)) else {
        return;
    };
    for &o in &ids {
        if o != bystander {
            clog(cluster, net, clogged, bystander, o);
            clog(cluster, net, clogged, o, bystander);
        }
    }
    cluster.checker.note(&format!("isolate n{bystander}"));
    sleep(Duration::from_millis(500)).await;
    cluster.kill(victim, 3);
    cluster.replace_disk(victim);
    cluster.restart(victim);
    sleep(Duration::from_millis(100)).await;
    cluster.kill(leader, 5);
    unclog_all(cluster, net, clogged);
    cluster.checker.note("heal network");
    sleep(Duration::from_secs(3)).await;
    cluster.restart(leader);
}

/// Waits (up to 2 s) for leadership to change hands, then kills the new
/// leader within a few milliseconds: entries of earlier terms are then
/// replicated without one of the new term, the case of the paper's Figure 8.
async fn kill_next_leader(cluster: &mut SimCluster, rng: &mut ChaCha8Rng) {
    let old = cluster.checker.current_leader();
    cluster.kill_if_some(old, rng);
    let give_up = Instant::now() + Duration::from_secs(2);
    while Instant::now() < give_up {
        sleep(Duration::from_millis(5)).await;
        let now = cluster.checker.current_leader();
        if now.is_some() && now != old {
            sleep(Duration::from_millis(rng.random_range(0..30))).await;
            if let Some(l) = now {
                cluster.kill(l, rng.random());
            }
            return;
        }
    }
}

/// A deposed leader comes back with a stale tail. The leader is cut off
/// while its clients keep writing to it (entries of its term no one else
/// has), and the others elect a new leader. Then one of three endings:
/// - the new leader commits and lives on: the old one's late appends and
///   votes of its old term arrive (Figure 2's stale-term checks);
/// - the new leader commits and dies at once: the old one, healed, holds a
///   longer log of an older term than the survivors (the up-to-date
///   check, §5.4.1);
/// - Figure 8 (see `figure_eight`);
/// - the old leader was paused, not cut off, and wakes to answers of its
///   term that were held back (see `paused_leader_wakes`).
async fn deposed_leader_returns(
    cluster: &mut SimCluster,
    net: &NetSim,
    clogged: &mut BTreeSet<(u64, u64)>,
    rng: &mut ChaCha8Rng,
) {
    let Some(old) = cluster.checker.current_leader() else {
        return;
    };
    let ending = rng.random_range(0..4);
    if ending == 3 {
        return paused_leader_wakes(cluster, net, clogged, old, rng).await;
    }
    let links = cut_off(cluster, net, clogged, old);
    let flood = rng.random_range(0..300);
    flood_with_writes(cluster, old, flood);
    cluster.checker.note(&format!(
        "depose n{old}: cut off, {flood} writes sent to it"
    ));
    if ending == 2 {
        return figure_eight(cluster, net, clogged, old, links, rng).await;
    }
    if let Some(new) = next_leader(cluster, old, true).await {
        if ending == 0 {
            sleep(Duration::from_millis(rng.random_range(0..300))).await;
        } else {
            cluster
                .checker
                .note(&format!("depose n{old}: kill new leader n{new}"));
            cluster.kill(new, rng.random());
        }
    }
    sleep(Duration::from_millis(rng.random_range(0..50))).await;
    heal(cluster, net, clogged, links);
    cluster.checker.note(&format!("depose n{old}: healed"));
}

/// Lease reads' hard case: a new leader elected while the old one may
/// still believe its lease holds. Either its followers restart just as a
/// member cut off from it campaigns (a restarted member must keep the
/// promise it made before stopping: no vote for an election timeout), or
/// its hand-over (TimeoutNow) is held back until long after it gave up
/// waiting and resumed (a leader that sent one must not read on its lease
/// again). Whatever the new leader's voters say to the old one is held
/// back. Then a write through the new leader and, once acknowledged, a
/// read through the old one: a read on a lease that no longer holds misses
/// the write, and the history is not linearizable.
async fn lease_trap(
    cluster: &mut SimCluster,
    net: &NetSim,
    clogged: &mut BTreeSet<(u64, u64)>,
    history: &Arc<HistoryRecorder>,
    rng: &mut ChaCha8Rng,
) {
    let Some(old) = cluster
        .checker
        .current_leader()
        .filter(|&l| !cluster.is_down(l))
    else {
        return;
    };
    let others: Vec<u64> = cluster.ids().into_iter().filter(|&o| o != old).collect();
    let Some(&next) = others.get(rng.random_range(0..others.len().max(1))) else {
        return;
    };
    let voters: Vec<u64> = others.iter().copied().filter(|&o| o != next).collect();
    let mut links = Vec::new();
    let restart_variant = rng.random_bool(0.5);
    if restart_variant {
        cluster.checker.note(&format!(
            "lease trap: n{next} cut off from leader n{old}; its voters restart as it campaigns"
        ));
        // The leader's new entries reach no one (heartbeats still renew
        // its lease), so the member cut off keeps a log as long as theirs.
        cluster.filter_appends(old, AppendFilter::WithholdCurrentTerm);
        sleep(Duration::from_millis(20)).await;
        for (a, b) in [(old, next), (next, old)] {
            if !clogged.contains(&(a, b)) {
                clog(cluster, net, clogged, a, b);
                links.push((a, b));
            }
        }
        // Its campaign waits in the network while the voters restart, and
        // reaches them just after.
        cluster.hold_messages(next, Some(HOLD_ALL));
        let campaigning =
            wait_for_role(cluster, next, &[Role::PreCandidate, Role::Candidate]).await;
        for &v in &voters {
            cluster.hold_messages(v, Some(old));
            if !clogged.contains(&(old, v)) {
                clog(cluster, net, clogged, old, v);
                links.push((old, v));
            }
            if campaigning {
                cluster.kill_process(v);
                cluster.restart(v);
            }
        }
        sleep(Duration::from_millis(5)).await;
        cluster.hold_messages(next, None);
    } else {
        cluster.checker.note(&format!(
            "lease trap: leader n{old} hands over to n{next}; the TimeoutNow arrives late"
        ));
        cluster.hold_timeout_now(old, true);
        ask_transfer(cluster, old, Some(next));
        sleep(Duration::from_millis(rng.random_range(400..800))).await;
        if !clogged.contains(&(next, old)) {
            clog(cluster, net, clogged, next, old);
            links.push((next, old));
        }
        for &v in &voters {
            cluster.hold_messages(v, Some(old));
        }
        cluster.hold_timeout_now(old, false);
    }
    if next_leader(cluster, old, true).await == Some(next) {
        probe_old_leader(cluster, history, next, old).await;
    }
    for &v in &voters {
        cluster.hold_messages(v, None);
    }
    cluster.hold_messages(next, None);
    cluster.filter_appends(old, AppendFilter::Off);
    heal(cluster, net, clogged, links);
    cluster.checker.note("lease trap: over");
}

/// Waits (up to 3 s) until `node` reports one of `roles`.
async fn wait_for_role(cluster: &SimCluster, node: u64, roles: &[Role]) -> bool {
    let give_up = Instant::now() + Duration::from_secs(3);
    while Instant::now() < give_up {
        if cluster
            .checker
            .role_of(node)
            .is_some_and(|r| roles.contains(&r))
        {
            return true;
        }
        sleep(Duration::from_millis(1)).await;
    }
    false
}

/// A write through `new` and, once acknowledged, a read of it through
/// `old`, both recorded in the history.
async fn probe_old_leader(
    cluster: &mut SimCluster,
    history: &Arc<HistoryRecorder>,
    new: u64,
    old: u64,
) {
    let host = extra_host(cluster, "lease-probe");
    let cfg = WorkloadConfig {
        keys: 1,
        request_timeout: Duration::from_millis(500),
        stop_at: Instant::now(),
        think_max: Duration::ZERO,
    };
    let addrs = cluster.client_addrs.clone();
    let history = history.clone();
    let id = 1000 + cluster.extra_hosts;
    let key = Bytes::from(format!("k{}", id % 5));
    let value = Bytes::from(format!("trap-{id}"));
    let (new_at, old_at) = (new as usize - 1, old as usize - 1);
    let probe = host.spawn(async move {
        let mut client = Client::new(id, addrs, id, cfg, history);
        let wrote = client
            .once_at(
                new_at,
                Input::Set {
                    key: key.clone(),
                    value,
                },
            )
            .await;
        if wrote == Some(Output::Ok) {
            client.once_at(old_at, Input::Get { key }).await;
        }
    });
    let _ = probe.await;
}

/// An operator's `TRANSFER-LEADER [to]` sent to `node` from a host of its
/// own (answered or not, it is not waited for).
fn ask_transfer(cluster: &mut SimCluster, node: u64, to: Option<u64>) {
    let Some(&addr) = cluster.client_addrs.get(node as usize - 1) else {
        return;
    };
    cluster
        .checker
        .note(&format!("ask n{node} to hand leadership to {to:?}"));
    let line = match to {
        Some(id) => format!("TRANSFER-LEADER {id}\n"),
        None => "TRANSFER-LEADER\n".to_string(),
    };
    let host = extra_host(cluster, "operator");
    host.spawn(async move {
        use tokio::io::AsyncWriteExt;
        let connect = tokio::net::TcpStream::connect(addr);
        if let Ok(Ok(mut stream)) = tokio::time::timeout(Duration::from_millis(100), connect).await
        {
            let _ = stream.write_all(line.as_bytes()).await;
            let _ = stream.flush().await;
            sleep(Duration::from_secs(2)).await;
        }
    });
}

/// A new simulated host with an address of its own.
fn extra_host(cluster: &mut SimCluster, name: &str) -> madsim::runtime::NodeHandle {
    let tag = cluster.extra_hosts;
    cluster.extra_hosts += 1;
    let (third, fourth) = (4 + tag / 250, 1 + tag % 250);
    Handle::current()
        .create_node()
        .name(format!("{name}-{tag}"))
        .ip(IpAddr::V4(Ipv4Addr::new(10, 0, third as u8, fourth as u8)))
        .build()
}

/// Sends `count` writes to `node` at once, each on its own connection, from
/// a host of their own, and never reads the answers: a deposed leader
/// cut off from its peers grows a long tail of its own term (one a
/// snapshot index can fall inside). The keys (`z...`) are none the
/// workload reads, so whether these writes happen is never checked; the
/// state of every node still is.
fn flood_with_writes(cluster: &mut SimCluster, node: u64, count: u64) {
    let Some(&addr) = cluster.client_addrs.get(node as usize - 1) else {
        return;
    };
    let host = extra_host(cluster, "flood");
    host.spawn(async move {
        use tokio::io::AsyncWriteExt;
        let mut open = Vec::new();
        for i in 0..count {
            let Ok(Ok(mut stream)) = tokio::time::timeout(
                Duration::from_millis(50),
                tokio::net::TcpStream::connect(addr),
            )
            .await
            else {
                return;
            };
            let line = format!("SET z-{i} v\n");
            if stream.write_all(line.as_bytes()).await.is_err() || stream.flush().await.is_err() {
                return;
            }
            open.push(stream);
        }
        sleep(Duration::from_secs(3)).await;
    });
}

/// A leader paused (a long GC pause, a stalled VM) while the answers to
/// its last heartbeats are held back in the network. The others elect a
/// new leader that serves writes; the paused leader's clients queue reads
/// on it. It wakes still believing it leads, registers those reads, and
/// only then do the held answers of its old term arrive, before anything
/// of the new term. They answer rounds sent before the reads arrived, so
/// they must not confirm them (thesis §6.4: a read waits for a round sent
/// after it arrived).
async fn paused_leader_wakes(
    cluster: &mut SimCluster,
    net: &NetSim,
    clogged: &mut BTreeSet<(u64, u64)>,
    old: u64,
    rng: &mut ChaCha8Rng,
) {
    let others: Vec<u64> = cluster.ids().into_iter().filter(|&o| o != old).collect();
    for &o in &others {
        cluster.hold_messages(o, Some(old));
    }
    sleep(Duration::from_millis(rng.random_range(20..80))).await;
    cluster.pause(old);
    let links = cut_off(cluster, net, clogged, old);
    cluster
        .checker
        .note(&format!("depose n{old}: paused, answers to it held back"));
    let new = next_leader(cluster, old, true).await;
    sleep(Duration::from_millis(rng.random_range(100..500))).await;
    cluster.resume(old);
    sleep(Duration::from_millis(rng.random_range(1..20))).await;
    // Answers may reach it again, but it still cannot reach anyone.
    let (inbound, outbound): (Vec<_>, Vec<_>) = links.into_iter().partition(|&(_, to)| to == old);
    heal(cluster, net, clogged, inbound);
    for &o in others.iter().filter(|&&o| Some(o) != new) {
        cluster.hold_messages(o, None);
    }
    cluster.checker.note(&format!(
        "depose n{old}: woke, held answers of its term released"
    ));
    sleep(Duration::from_millis(rng.random_range(5..30))).await;
    for &o in &others {
        cluster.hold_messages(o, None);
    }
    sleep(Duration::from_millis(rng.random_range(0..50))).await;
    heal(cluster, net, clogged, outbound);
    cluster.checker.note(&format!("depose n{old}: healed"));
}

/// Figure 8 on any cluster size. `old` (cut off by the caller through
/// `links`) holds entries of its term no one else has. The others' appends
/// are lost while they elect a leader, so its first entry reaches only its
/// own disk; it is killed once that is durable. The old leader, healed, is
/// elected again (its log is the most up-to-date left) and spreads its old
/// entries, but the entries of its new term are withheld from its appends
/// (as if the append carrying them were lost); at its first commit it is
/// cut off and killed, and the other comes back with its later term. An
/// entry of an earlier term counted onto a majority was never committed
/// (§5.4.2): had the old leader taken it for committed, the returning
/// leader would now erase it.
async fn figure_eight(
    cluster: &mut SimCluster,
    net: &NetSim,
    clogged: &mut BTreeSet<(u64, u64)>,
    old: u64,
    links: Vec<(u64, u64)>,
    rng: &mut ChaCha8Rng,
) {
    let others: Vec<u64> = cluster.ids().into_iter().filter(|&o| o != old).collect();
    for &o in &others {
        cluster.filter_appends(o, AppendFilter::DropAll);
    }
    let new = next_leader(cluster, old, false).await;
    if let Some(new) = new {
        // Long enough for its own fsync, even on the slow disk.
        sleep(Duration::from_millis(rng.random_range(200..400))).await;
        cluster.checker.note(&format!(
            "figure 8: n{new} elected, its appends lost; killed"
        ));
        cluster.kill(new, rng.random());
    }
    for &o in &others {
        cluster.filter_appends(o, AppendFilter::Off);
    }
    let Some(new) = new else {
        heal(cluster, net, clogged, links);
        return;
    };
    cluster.filter_appends(old, AppendFilter::WithholdCurrentTerm);
    heal(cluster, net, clogged, links);
    let committed = next_commit_as_leader(cluster, old).await;
    if committed {
        // Cut first: its next appends (an entry of its new term) must not
        // land before it dies.
        let _ = cut_off(cluster, net, clogged, old);
        cluster.checker.note(&format!(
            "figure 8: n{old} re-elected, killed at its first commit; n{new} back"
        ));
        cluster.kill(old, rng.random());
    }
    cluster.filter_appends(old, AppendFilter::Off);
    cluster.restart(new);
}

/// Cuts `node` off from every other member; returns the links it cut (an
/// earlier partition's links are left to whoever made them).
fn cut_off(
    cluster: &SimCluster,
    net: &NetSim,
    clogged: &mut BTreeSet<(u64, u64)>,
    node: u64,
) -> Vec<(u64, u64)> {
    let links: Vec<(u64, u64)> = cluster
        .ids()
        .into_iter()
        .filter(|&o| o != node)
        .flat_map(|o| [(node, o), (o, node)])
        .filter(|link| !clogged.contains(link))
        .collect();
    for &(a, b) in &links {
        clog(cluster, net, clogged, a, b);
    }
    links
}

/// Reopens `links` (as cut by `cut_off`).
fn heal(
    cluster: &SimCluster,
    net: &NetSim,
    clogged: &mut BTreeSet<(u64, u64)>,
    links: Vec<(u64, u64)>,
) {
    for (a, b) in links {
        if let (Some(x), Some(y)) = (cluster.madsim_id(a), cluster.madsim_id(b)) {
            net.unclog_link(x, y);
        }
        clogged.remove(&(a, b));
    }
}

/// Waits (up to 3 s) for a leader other than `old`, and if `committed`
/// also for it to commit (an entry of its term). Polls every millisecond.
async fn next_leader(cluster: &SimCluster, old: u64, committed: bool) -> Option<u64> {
    let give_up = Instant::now() + Duration::from_secs(3);
    let mut elected: Option<(u64, u64)> = None;
    while Instant::now() < give_up {
        match (elected, cluster.checker.current_leader()) {
            (None, Some(l)) if l != old && !committed => return Some(l),
            (None, Some(l)) if l != old => elected = Some((l, cluster.checker.commit_of(l))),
            (Some((l, at)), _) if cluster.checker.commit_of(l) > at => return Some(l),
            _ => {}
        }
        sleep(Duration::from_millis(1)).await;
    }
    None
}

/// Waits (up to 3 s) for `node` to lead and then commit; true if it did.
async fn next_commit_as_leader(cluster: &SimCluster, node: u64) -> bool {
    let give_up = Instant::now() + Duration::from_secs(3);
    let mut at_election = None;
    while Instant::now() < give_up {
        let commit = cluster.checker.commit_of(node);
        match at_election {
            None if cluster.checker.current_leader() == Some(node) => at_election = Some(commit),
            Some(at) if commit > at => return true,
            _ => {}
        }
        sleep(Duration::from_millis(1)).await;
    }
    false
}

/// Jepsen's "swizzle": cut nodes off one by one in a random order, then
/// reconnect them one by one in another, so leadership moves around while
/// the majority changes shape.
async fn swizzle(
    cluster: &SimCluster,
    net: &NetSim,
    clogged: &mut BTreeSet<(u64, u64)>,
    rng: &mut ChaCha8Rng,
) {
    let mut order = cluster.ids();
    shuffle(&mut order, rng);
    cluster.checker.note(&format!("swizzle clog {order:?}"));
    for &victim in &order {
        for other in cluster.ids().into_iter().filter(|&o| o != victim) {
            clog(cluster, net, clogged, victim, other);
            clog(cluster, net, clogged, other, victim);
        }
        sleep(Duration::from_millis(rng.random_range(50..300))).await;
    }
    shuffle(&mut order, rng);
    cluster.checker.note(&format!("swizzle unclog {order:?}"));
    let mut open: Vec<u64> = Vec::new();
    for &back in &order {
        for &o in &open {
            for (a, b) in [(back, o), (o, back)] {
                if let (Some(x), Some(y)) = (cluster.madsim_id(a), cluster.madsim_id(b)) {
                    net.unclog_link(x, y);
                    clogged.remove(&(a, b));
                }
            }
        }
        open.push(back);
        sleep(Duration::from_millis(rng.random_range(50..300))).await;
    }
}

fn shuffle(items: &mut [u64], rng: &mut ChaCha8Rng) {
    for i in (1..items.len()).rev() {
        items.swap(i, rng.random_range(0..=i));
    }
}

fn clog(cluster: &SimCluster, net: &NetSim, clogged: &mut BTreeSet<(u64, u64)>, a: u64, b: u64) {
    if let (Some(x), Some(y)) = (cluster.madsim_id(a), cluster.madsim_id(b)) {
        net.clog_link(x, y);
        clogged.insert((a, b));
    }
}

fn unclog_all(cluster: &SimCluster, net: &NetSim, clogged: &mut BTreeSet<(u64, u64)>) {
    for (a, b) in std::mem::take(clogged) {
        if let (Some(x), Some(y)) = (cluster.madsim_id(a), cluster.madsim_id(b)) {
            net.unclog_link(x, y);
        }
    }
}

fn heal_all(cluster: &mut SimCluster) {
    let net = NetSim::current();
    for id in cluster.ids() {
        if let Some(x) = cluster.madsim_id(id) {
            net.unclog_node(x);
        }
        cluster.resume(id);
        cluster.restart(id);
    }
}

/// Liveness: after healing, a leader must be elected within a bound, every
/// client must get a write committed through the client protocol, and
/// every node must reach the same applied index with the same state. A
/// failure names each node's last state (role, term, commit, applied,
/// standing), so a node stuck campaigning or never catching up shows.
async fn converge(
    cluster: &SimCluster,
    handle: &Handle,
    seed: u64,
    clients: u64,
    deadline: Duration,
) -> Result<(), String> {
    let started = Instant::now();
    let give_up = started + deadline;
    let ids = cluster.ids();
    let nodes = || cluster.checker.describe_nodes(&ids);
    // A leader within a third of the time (several election timeouts even
    // for a node that must first be repaired).
    let leader_by = started + deadline / 3;
    let live_leader = || {
        cluster
            .checker
            .current_leader()
            .filter(|&l| !cluster.is_down(l))
    };
    while live_leader().is_none() {
        if Instant::now() >= leader_by {
            return Err(format!(
                "liveness: no leader within {:?} after healing ({})",
                deadline / 3,
                nodes()
            ));
        }
        sleep(Duration::from_millis(10)).await;
    }
    // Every client, each from a host of its own and starting at a node of
    // its own, must get a write through.
    let mut probes = Vec::new();
    for c in 1..=clients.max(1) {
        let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 2, c as u8));
        let host = handle
            .create_node()
            .name(format!("liveness-probe-{c}"))
            .ip(ip)
            .build();
        let cfg = WorkloadConfig {
            keys: 1,
            request_timeout: Duration::from_secs(1),
            stop_at: give_up,
            think_max: Duration::from_millis(0),
        };
        let addrs = cluster.client_addrs.clone();
        let history = Arc::new(HistoryRecorder::new());
        let task = host.spawn(async move {
            let mut client = Client::new(c, addrs, seed, cfg, history);
            client
                .write_until_ok(format!("liveness-{c}").as_bytes(), give_up)
                .await
        });
        probes.push((c, host.id(), task));
    }
    let mut stuck = Vec::new();
    for (c, host, task) in probes {
        if !task.await.unwrap_or(false) {
            stuck.push(c);
        }
        handle.kill(host);
    }
    if !stuck.is_empty() {
        return Err(format!(
            "liveness: no write committed within {deadline:?} after healing for clients {stuck:?} ({})",
            nodes()
        ));
    }
    loop {
        let applied = cluster.checker.last_applied();
        let ids = cluster.ids();
        let indexes: Vec<u64> = ids
            .iter()
            .map(|id| applied.get(id).copied().unwrap_or(0))
            .collect();
        let same = indexes.windows(2).all(|w| w[0] == w[1]) && indexes[0] > 0;
        // Every damaged node must be a voter again, too.
        let not_voters = cluster.checker.not_voters();
        if same && not_voters.is_empty() {
            // Digests are recorded per index and compared across nodes as
            // they apply; equal indexes mean equal states.
            return Ok(());
        }
        if Instant::now() >= give_up {
            return Err(format!(
                "liveness: nodes did not converge within {deadline:?} (applied {indexes:?}, \
                 not voters {not_voters:?}; {})",
                nodes()
            ));
        }
        sleep(Duration::from_millis(100)).await;
    }
}
