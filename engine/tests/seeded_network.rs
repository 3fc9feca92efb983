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

/// Runs one seed; returns (proposals accepted, reads served).
fn run_seed(seed: u64, trace: bool) -> Result<(u64, u64), Violation> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    let n = if rng.random_bool(0.5) { 3 } else { 5 };
    let faults = NetFaults {
        drop: rng.random_range(0.0..0.2),
        duplicate: rng.random_range(0.0..0.1),
        max_delay: rng.random_range(0..6),
    };
    let mut c = Cluster::new(n, seed, faults);
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
                        if c.nodes[&victim].up {
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
                if converged {
                    return Ok(());
                }
            }
        }
        Err(Violation(format!(
            "no convergence within {LIVENESS_STEPS} steps after healing (leader {:?}, applied {:?})",
            c.leader(),
            ids.iter().map(|id| c.nodes[id].applied).collect::<Vec<_>>()
        )))
    })();
    if trace {
        if let Some(t) = &c.trace {
            println!("{t}");
        }
    }
    result.map(|()| (c.proposals, c.reads_served))
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
    let (mut proposals, mut reads) = (0, 0);
    for seed in first..first + seeds {
        match run_seed(seed, false) {
            Ok((p, r)) => {
                proposals += p;
                reads += r;
            }
            Err(v) => panic!(
                "seed {seed} failed: {}\nreplay with its trace: RAFT_SEED={seed} cargo test -p kv-engine --test seeded_network -- --nocapture",
                v.0
            ),
        }
    }
    println!("{seeds} seeds passed: {proposals} proposals accepted, {reads} reads served");
    assert!(proposals > seeds, "the workload must actually write");
    assert!(reads > 0, "the workload must actually read");
}
