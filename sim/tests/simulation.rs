//! Seeded simulation runs of whole clusters under faults.
//!
//! One seed per run; `MADSIM_TEST_SEED` picks it and `MADSIM_TEST_NUM`
//! sweeps `seed, seed+1, ...`. `./test.sh` runs a CI-sized sweep; see the
//! README for long sweeps.
#![cfg(madsim)]
// Each run prints its seed first, so a run killed by a timeout still says which.
#![allow(clippy::print_stderr)]

use std::time::Duration;

use kv_sim::scenario::{run, Load, Scenario, Script};
use kv_sim::swarm::{Fault, FaultMix};

/// How to replay and trace `seed` of `test`; a narrowed sweep's seed runs
/// another mix, so the replay narrows to the same `faults`.
fn replay_hint(seed: u64, test: &str, faults: Option<&str>) -> String {
    let faults = faults
        .map(|f| format!("SIM_FAULTS={f} "))
        .unwrap_or_default();
    let nodes = if test.starts_with("five") { 5 } else { 3 };
    format!(
        "replay: {faults}MADSIM_TEST_SEED={seed} RUSTFLAGS=\"--cfg madsim\" CARGO_TARGET_DIR=target/sim \
         cargo test -p kv-sim --release --test simulation {test} -- --exact\n\
         trace:  {faults}SIM_TRACE_SEED={seed} SIM_TRACE_NODES={nodes} ... replay_trace_of_one_seed -- --nocapture"
    )
}

/// The nemesis faults `SIM_FAULTS` names (comma-separated, as a mix prints
/// them), if set: a sweep with only those, to see what each finds alone.
fn only_faults() -> Option<Vec<Fault>> {
    std::env::var("SIM_FAULTS")
        .ok()
        .map(|names| faults_named(&names))
}

/// The faults a comma-separated list names (as a mix prints them); a name
/// that is no fault stops the test rather than run a weaker mix.
fn faults_named(names: &str) -> Vec<Fault> {
    names
        .split(',')
        .map(|n| FaultMix::kind_named(n).unwrap_or_else(|| panic!("no fault named {n:?}")))
        .collect()
}

async fn sweep_one(nodes: u64, test: &str) {
    let seed = madsim::runtime::Handle::current().seed();
    let mut scenario = Scenario::standard(nodes);
    scenario.only_faults = only_faults();
    let mix = match &scenario.only_faults {
        Some(kinds) => FaultMix::for_seed(seed).only(kinds),
        None => FaultMix::for_seed(seed),
    };
    eprintln!("seed {seed} ({nodes} nodes), {mix}");
    match run(scenario).await {
        Ok(r) => eprintln!(
            "seed {seed} ok: {} ops ({} indeterminate), {} node events checked, {:.1} s simulated",
            r.ops,
            r.indeterminate,
            r.events,
            r.simulated.as_secs_f64()
        ),
        Err(e) => panic!(
            "seed {seed} FAILED: {e}\n{}",
            replay_hint(seed, test, std::env::var("SIM_FAULTS").ok().as_deref())
        ),
    }
}

#[madsim::test]
async fn three_nodes_stay_linearizable_under_faults() {
    sweep_one(3, "three_nodes_stay_linearizable_under_faults").await;
}

#[madsim::test]
async fn five_nodes_stay_linearizable_under_faults() {
    sweep_one(5, "five_nodes_stay_linearizable_under_faults").await;
}

/// A seed that failed once, found by a sweep beyond CI's range.
struct OnceFailed {
    nodes: u64,
    seed: u64,
    /// The `SIM_FAULTS` the sweep ran with, if it was narrowed.
    faults: Option<&'static str>,
    /// What it found, and the fix.
    found: &'static str,
}

/// Every CI run replays these.
const SEEDS_THAT_ONCE_FAILED: &[OnceFailed] = &[
    OnceFailed {
        nodes: 3,
        seed: 21698,
        faults: None,
        found: "an install whose marker's fsync failed was built on; a later fallback to an \
                older snapshot revived replaced entries (1839d63, 278f325)",
    },
    OnceFailed {
        nodes: 3,
        seed: 2108,
        faults: Some("Disk,CrashAtDiskOp,KillAny,RestartAll,TransferLeader,Heal"),
        found: "the disk nemesis took a node that reported itself a voter, but whose disk \
                still said recovering (the write failed on a full disk), for intact, and \
                replaced a second disk: no leader after healing",
    },
    OnceFailed {
        nodes: 3,
        seed: 3317,
        faults: Some("Disk,CrashAtDiskOp,KillAny,RestartAll,TransferLeader,Heal"),
        found: "a node whose disk had filled up probed it again only every 10 s, so after \
                the heal it rejoined too late for the one other voter to elect a leader \
                (the retry now backs off to 2 s at most)",
    },
];

#[test]
fn seeds_that_once_failed_pass() {
    for case in SEEDS_THAT_ONCE_FAILED {
        let (nodes, seed, faults) = (case.nodes, case.seed, case.faults);
        // A fresh thread, as the sweep runs each seed (see replay_trace_of_one_seed).
        let outcome = std::thread::spawn(move || {
            let rt =
                madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
            let mut scenario = Scenario::standard(nodes);
            scenario.only_faults = faults.map(faults_named);
            rt.block_on(run(scenario)).map(|_| ())
        })
        .join()
        .unwrap_or_else(|_| panic!("seed {seed} ({nodes} nodes): the run panicked"));
        if let Err(e) = outcome {
            let test = match nodes {
                3 => "three_nodes_stay_linearizable_under_faults",
                _ => "five_nodes_stay_linearizable_under_faults",
            };
            panic!(
                "seed {seed} ({nodes} nodes) FAILED again: {e}\nit once found: {}\n{}",
                case.found,
                replay_hint(seed, test, faults)
            );
        }
    }
}

fn traced_run(seed: u64, nodes: u64) -> String {
    let rt = madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
    rt.block_on(async move {
        let mut scenario = Scenario::standard(nodes);
        scenario.only_faults = only_faults();
        scenario.trace = true;
        match run(scenario).await {
            Ok(r) => r.trace,
            Err(e) => format!("FAILED: {e}"),
        }
    })
}

/// The same seed twice gives the same run: the property every replay relies on.
#[test]
fn a_seed_replays_bit_for_bit() {
    for (seed, nodes) in [(1, 3), (2, 5), (3, 3)] {
        let first = std::thread::spawn(move || traced_run(seed, nodes))
            .join()
            .expect("first run");
        let second = std::thread::spawn(move || traced_run(seed, nodes))
            .join()
            .expect("second run");
        assert!(first.lines().count() > 10, "the trace records the run");
        assert_eq!(
            first, second,
            "seed {seed} ({nodes} nodes) ran differently twice"
        );
    }
}

/// Prints the trace of one seed: `SIM_TRACE_SEED=567 SIM_TRACE_NODES=5 ... -- replay_trace_of_one_seed --nocapture`;
/// with `SIM_LOG=info` (any tracing filter, e.g. `kv_net=debug`) the
/// nodes' logs too, stamped with simulated time.
#[test]
fn replay_trace_of_one_seed() {
    let Ok(seed) = std::env::var("SIM_TRACE_SEED") else {
        return;
    };
    if let Ok(filter) = std::env::var("SIM_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .init();
    }
    let seed: u64 = seed.parse().expect("SIM_TRACE_SEED is a number");
    let nodes: u64 = std::env::var("SIM_TRACE_NODES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3);
    // A fresh thread, as madsim's own test runner uses: madsim seeds std's
    // HashMap keys only on a thread that has not made one yet (this test's
    // thread has, through the harness and the log filter), and without that
    // the run would differ from the sweep's run of the same seed.
    let trace = std::thread::spawn(move || traced_run(seed, nodes))
        .join()
        .expect("traced run");
    eprintln!("{trace}");
}

/// A fixed scenario's trace, as kept in `sim/tests/snapshots/`.
fn scripted_trace(seed: u64, script: Script) -> String {
    scripted_trace_of(seed, script, 3)
}

fn scripted_trace_of(seed: u64, script: Script, nodes: u64) -> String {
    let rt = madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
    rt.block_on(async move {
        let mut scenario = Scenario::standard(nodes);
        scenario.trace = true;
        scenario.clients = 2;
        scenario.fault_phase = std::time::Duration::from_secs(8);
        scenario.script = Some(script);
        match run(scenario).await {
            Ok(r) => format!(
                "{}ops: {} ({} indeterminate)\n",
                r.trace, r.ops, r.indeterminate
            ),
            Err(e) => format!("FAILED: {e}"),
        }
    })
}

#[test]
fn leader_crash_trace() {
    insta::assert_snapshot!(scripted_trace(11, Script::LeaderCrash));
}

#[test]
fn partition_heal_trace() {
    insta::assert_snapshot!(scripted_trace(12, Script::PartitionHeal));
}

#[test]
fn torn_wal_tail_trace() {
    let trace = scripted_trace(13, Script::TornWalTail);
    assert!(trace.contains("kept as a torn tail"), "{trace}");
    insta::assert_snapshot!(trace);
}

/// Seeds of `Script::PageCacheLoss` and `Script::ReplacedDisk` that lost an
/// acknowledged write before start-up fsyncs and recovering nodes existed.
#[test]
fn disk_fault_scripts_lose_nothing() {
    for script in [Script::ReplacedDisk, Script::PageCacheLoss] {
        for seed in 1..=20 {
            let trace = scripted_trace(seed, script);
            assert!(
                !trace.starts_with("FAILED"),
                "{script:?} seed {seed}: {trace}"
            );
        }
    }
}

/// A majority loses its disks at once: the cluster stops serving, and
/// never loses or invents data.
#[test]
fn a_damaged_majority_stops_serving_and_never_serves_lost_data() {
    for seed in 1..=10 {
        for nodes in [3, 5] {
            let trace = scripted_trace_of(seed, Script::MajorityDamage, nodes);
            assert!(
                !trace.starts_with("FAILED"),
                "seed {seed}, {nodes} nodes: {trace}"
            );
        }
    }
}

/// A leader whose fsync fails hands over at once: a new leader within the
/// shortest election timeout (150 ms here), where waiting for followers to
/// time out would take longer. It then rejoins, and the cluster converges.
#[test]
fn a_leader_whose_disk_fails_hands_over_and_rejoins() {
    for seed in 1..=10 {
        let trace = scripted_trace(seed, Script::LeaderDiskFails);
        assert!(!trace.starts_with("FAILED"), "seed {seed}: {trace}");
        let ms: u64 = trace
            .lines()
            .find_map(|l| {
                l.split("new leader n")
                    .nth(1)?
                    .split(" after ")
                    .nth(1)?
                    .strip_suffix(" ms")?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("seed {seed}: no new leader: {trace}"));
        assert!(ms < 150, "seed {seed}: {ms} ms without a leader\n{trace}");
    }
}

/// A full disk takes its node out; once space is freed it rejoins by itself.
#[test]
fn a_node_whose_disk_fills_up_rejoins_once_space_is_freed() {
    for seed in 1..=10 {
        let trace = scripted_trace(seed, Script::DiskFull);
        assert!(!trace.starts_with("FAILED"), "seed {seed}: {trace}");
    }
}

/// Snapshots never stall heartbeats: with a state whose snapshots take
/// several election timeouts to write on a slow disk (and as long again to
/// send and install), a fault-free run keeps its first leader throughout.
#[test]
fn snapshots_slower_than_an_election_timeout_cause_no_leader_change() {
    for seed in 1..=4 {
        let rt = madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
        let report = rt.block_on(async move {
            let mut scenario = Scenario::standard(3);
            scenario.nemesis = false;
            scenario.load = Some(Load {
                keys: 20_000,
                disk_bytes_per_sec: 1 << 20,
            });
            run(scenario).await
        });
        let report = report.unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        // Not vacuous: snapshots did take that long (the longest election
        // timeout is 300 ms).
        let slowest = report.snapshots.iter().map(|s| s.millis).max();
        assert!(
            report.snapshots.len() >= 3 && slowest >= Some(1_000),
            "seed {seed}: snapshots {:?}",
            report.snapshots
        );
        assert_eq!(
            report.leaders.len(),
            1,
            "seed {seed}: leaders by term {:?}",
            report.leaders
        );
    }
}

/// A follower cut off while 16 clients write rejoins and catches up while
/// they still write, although each snapshot of its loaded state takes
/// longer to send on the slow disk than the leader takes to make the next
/// one: the leader keeps the snapshot in transfer and the log after it.
/// Before it did (6560855), seed 1 failed: 32 s after rejoining, with the
/// writes still going on, n1 had applied 415 of 924 entries; it installed
/// a snapshot only 14 s after the writes stopped. Now every seed catches
/// up 10-12 s after rejoining, by one snapshot.
#[test]
fn a_follower_rejoining_under_steady_writes_catches_up() {
    let mut by_snapshot = 0;
    for seed in 1..=4 {
        let rt = madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
        let report = rt.block_on(async move {
            let mut scenario = Scenario::standard(3);
            scenario.nemesis = false;
            scenario.trace = true;
            scenario.script = Some(Script::FollowerRejoinsUnderWrites);
            scenario.clients = 16;
            scenario.fault_phase = Duration::from_secs(40);
            scenario.load = Some(Load {
                keys: 20_000,
                disk_bytes_per_sec: 1 << 20,
            });
            run(scenario).await
        });
        let report = report.unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert!(report.trace.contains("caught up after"), "seed {seed}");
        if report.trace.contains("installed snapshot") {
            by_snapshot += 1;
        }
    }
    // Not vacuous: in most seeds the leader had compacted past it (in the
    // others, the slow disk let too few writes through for a snapshot).
    assert!(
        by_snapshot >= 2,
        "{by_snapshot} of 4 seeds needed a snapshot"
    );
}
