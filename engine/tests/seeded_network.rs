//! Randomised runs of 3- and 5-node clusters on a faulty in-memory network,
//! checking Raft's safety properties after every step and liveness once the
//! faults stop.
//!
//! `RAFT_SEEDS=N` sets how many seeds run (CI default 1,000);
//! `RAFT_SEED=S` replays one seed and prints its trace.

// A replayed seed prints its trace for the engineer chasing it.
#![allow(clippy::print_stdout)]

mod support;

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use support::{Cluster, NetFaults, Violation};

const FAULT_STEPS: u64 = 500;
const LIVENESS_STEPS: u64 = 400;

/// What one seed exercised.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    proposals: u64,
    reads: u64,
    damaged: u64,
    repaired: u64,
}

/// Runs one seed; returns what it exercised.
fn run_seed(seed: u64, trace: bool) -> Result<Counts, Violation> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    let n = if rng.random_bool(0.5) { 3 } else { 5 };
    let faults = NetFaults {
        drop: rng.random_range(0.0..0.2),
        duplicate: rng.random_range(0.0..0.1),
        max_delay: rng.random_range(0..6),
    };
    // Half the seeds start from empty storage and must discover that the
    // cluster is new; the others start as members of a known new cluster.
    let mut c = if rng.random_bool(0.5) {
        Cluster::new_fresh(n, seed, faults)
    } else {
        Cluster::new(n, seed, faults)
    };
    // Disk damage (a wiped disk, a damaged record or snapshot) on at most a
    // minority at a time, in a third of the seeds.
    let damage_rate = if rng.random_bool(0.33) { 2 } else { 0 };
    if trace {
        c.trace = Some(String::new());
    }
    c.compact_every = if rng.random_bool(0.5) {
        rng.random_range(3..20)
    } else {
        0
    };
    let p_sync = rng.random_range(0.3..1.0);
    let ids = c.ids();
    let mut next_value = 0u64;
    let result = (|| {
        for _ in 0..FAULT_STEPS {
            c.step_lazy_sync(p_sync)?;
            let target = c.leader().unwrap_or(ids[rng.random_range(0..ids.len())]);
            match rng.random_range(0..100) {
                0..=39 => {
                    next_value += 1;
                    c.propose(target, Bytes::from(format!("v{next_value}")))?;
                }
                40..=49 => {
                    c.read(target)?;
                }
                50 => {
                    let down = ids.iter().filter(|&&i| !c.nodes[&i].up).count();
                    if down < (n as usize - 1) / 2 {
                        let victim = ids[rng.random_range(0..ids.len())];
                        // A node that never wrote anything comes back as a
                        // wiped one would: that counts as damage.
                        let as_damage =
                            c.nodes[&victim].disk.is_empty() && !c.not_voters().contains(&victim);
                        let budget_left = c.not_voters().len() < (n as usize - 1) / 2;
                        if c.nodes[&victim].up && (!as_damage || budget_left) {
                            c.crash(victim);
                        }
                    }
                }
                51..=52 => {
                    let victim = ids[rng.random_range(0..ids.len())];
                    if !c.nodes[&victim].up {
                        c.restart(victim)?;
                    }
                }
                53 => {
                    let mut shuffled = ids.clone();
                    for i in (1..shuffled.len()).rev() {
                        shuffled.swap(i, rng.random_range(0..=i));
                    }
                    let split = rng.random_range(1..shuffled.len());
                    let (a, b) = shuffled.split_at(split);
                    c.partition(a, b);
                }
                54 => {
                    if let Some(l) = c.leader() {
                        let others: Vec<u64> = ids.iter().copied().filter(|&i| i != l).collect();
                        c.partition(&[l], &others);
                    }
                }
                55 => {
                    let a = ids[rng.random_range(0..ids.len())];
                    let b = ids[rng.random_range(0..ids.len())];
                    if a != b {
                        c.cut.insert((a, b));
                    }
                }
                56..=58 => c.heal(),
                59..=60 if rng.random_range(0..2) < damage_rate => {
                    let victim = ids[rng.random_range(0..ids.len())];
                    let damaged = c.not_voters();
                    if damaged.contains(&victim) || damaged.len() + 1 > (n as usize - 1) / 2 {
                        continue;
                    }
                    if rng.random_bool(0.4) {
                        c.wipe(victim)?;
                    } else {
                        let held = c.nodes[&victim].disk.entries.len();
                        let keep = rng.random_range(0..=held);
                        c.damage(victim, keep, rng.random_bool(0.2))?;
                    }
                }
                _ => {}
            }
        }
        // Liveness: heal everything; a leader must emerge, a new write must
        // commit, and every node must converge on the same applied state.
        c.heal();
        c.faults = NetFaults::default();
        for &id in &ids {
            if !c.nodes[&id].up {
                c.restart(id)?;
            }
        }
        // (leader, term, index) of the marker write; proposed again if that
        // leader is deposed before it commits.
        let mut marker: Option<(u64, u64, u64)> = None;
        for _ in 0..LIVENESS_STEPS {
            c.step()?;
            let leader = c.leader().map(|l| (l, c.nodes[&l].core.term()));
            let stale = match (marker, leader) {
                (None, _) => true,
                (Some((ml, mt, _)), Some((l, t))) => (ml, mt) != (l, t),
                (Some(_), None) => false,
            };
            if stale {
                if let Some((l, t)) = leader {
                    if c.propose(l, Bytes::from_static(b"liveness"))? {
                        marker = Some((l, t, c.nodes[&l].core.log().last_index()));
                    }
                }
            }
            if let Some((_, _, index)) = marker {
                let first = &c.nodes[&ids[0]];
                let converged = ids.iter().all(|id| {
                    let node = &c.nodes[id];
                    node.applied >= index
                        && node.applied == first.applied
                        && node.chain == first.chain
                });
                // Every damaged node must be a voter again.
                if converged && c.not_voters().is_empty() {
                    return Ok(());
                }
            }
        }
        Err(Violation(format!(
            "no convergence within {LIVENESS_STEPS} steps after healing:{}",
            c.describe()
        )))
    })();
    if trace {
        if let Some(t) = &c.trace {
            println!("{t}");
        }
    }
    result.map(|()| Counts {
        proposals: c.proposals,
        reads: c.reads_served,
        damaged: c.damaged,
        repaired: c.repaired,
    })
}

#[test]
fn safety_and_liveness_hold_across_seeds() {
    if let Ok(seed) = std::env::var("RAFT_SEED") {
        let seed: u64 = seed.parse().expect("RAFT_SEED is a number");
        if let Err(v) = run_seed(seed, true) {
            panic!("seed {seed}: {}", v.0);
        }
        return;
    }
    let seeds: u64 = std::env::var("RAFT_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let first: u64 = std::env::var("RAFT_FIRST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut total = Counts::default();
    for seed in first..first + seeds {
        // A panic inside the core (an assertion) must still name its seed.
        let outcome = std::panic::catch_unwind(|| run_seed(seed, false)).unwrap_or_else(|panic| {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(Violation(format!("the core panicked: {why}")))
        });
        match outcome {
            Ok(c) => {
                total.proposals += c.proposals;
                total.reads += c.reads;
                total.damaged += c.damaged;
                total.repaired += c.repaired;
            }
            Err(v) => panic!(
                "seed {seed} failed: {}\nreplay with its trace: RAFT_SEED={seed} cargo test -p kv-engine --test seeded_network -- --nocapture",
                v.0
            ),
        }
    }
    let Counts {
        proposals,
        reads,
        damaged,
        repaired,
    } = total;
    println!(
        "{seeds} seeds passed: {proposals} proposals accepted, {reads} reads served, \
         {damaged} disks wiped or damaged, {repaired} repairs"
    );
    assert!(proposals > seeds, "the workload must actually write");
    assert!(reads > 0, "the workload must actually read");
    if seeds >= 100 {
        assert!(damaged > 0 && repaired > 0, "disk damage must be exercised");
    }
}
