//! Swarm testing: every seed draws its own mix of faults and intensities
//! (some kinds left out, others made frequent), so a sweep meets rare
//! combinations often: seeds with many crashes and no partitions, seeds
//! with only message delays, seeds with time-travelling messages and slow
//! disks. The seed alone determines the mix, and the trace prints it.

use std::fmt;
use std::time::Duration;

use kv_net::transport::NetFaults;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A kind of fault the nemesis injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Kill the leader (restarted later).
    KillLeader,
    /// Kill the next leader as soon as it is elected (Figure 8).
    KillNextLeader,
    /// Kill any node.
    KillAny,
    /// Restart every stopped node.
    RestartAll,
    /// Cut the cluster in two random halves.
    Partition,
    /// Cut one node (mostly the leader) off from all others.
    Isolate,
    /// Cut one link in one direction.
    OneWay,
    /// Pause the leader (or resume all).
    Pause,
    /// A rolling partition (swizzle-clog).
    Swizzle,
    /// A disk fault on a minority (see `disk_faults.rs`).
    Disk,
    /// Power loss on any node the moment it next promises something
    /// durable (a vote, an acknowledgement, a snapshot installed or saved).
    CrashAtPromise,
    /// Power loss on any node right after its next disk write, fsync or
    /// rename (mid-batch, durable but unannounced, snapshot renamed but
    /// the log not compacted).
    CrashAtDiskOp,
    /// Cut the leader off while its clients still write to it, let a new
    /// leader commit, in half the runs kill that one, then heal: a deposed
    /// leader returns with a longer log of an older term (Figure 8, stale
    /// votes and appends).
    DeposedLeaderReturns,
    /// An operator asks the leader to hand leadership over (to a member
    /// drawn at random, or the one it chooses).
    TransferLeader,
    /// In lease-read seeds: a new leader is elected while the old one may
    /// still hold a lease, by restarting its followers just as a cut-off
    /// member campaigns, or by delivering a hand-over (TimeoutNow) long
    /// after the old leader gave it up; then a write on the new leader and
    /// a read on the old one.
    LeaseTrap,
    /// Heal the network.
    Heal,
}

/// Every kind, with its weight in the standard mix.
const STANDARD: [(Fault, u32); 16] = [
    (Fault::KillLeader, 2),
    (Fault::KillNextLeader, 2),
    (Fault::KillAny, 2),
    (Fault::RestartAll, 4),
    (Fault::Partition, 2),
    (Fault::Isolate, 2),
    (Fault::OneWay, 1),
    (Fault::Pause, 1),
    (Fault::Swizzle, 1),
    (Fault::Disk, 3),
    (Fault::CrashAtPromise, 2),
    (Fault::CrashAtDiskOp, 2),
    (Fault::DeposedLeaderReturns, 2),
    (Fault::TransferLeader, 2),
    (Fault::LeaseTrap, 2),
    (Fault::Heal, 4),
];

/// One seed's mix: a weight per kind of fault and the message faults.
#[derive(Debug, Clone)]
pub struct FaultMix {
    weights: Vec<(Fault, u32)>,
    /// Message faults on every link.
    pub net: NetFaults,
    /// The longest fsync of one slow node, if the seed has one.
    pub slow_disk: Option<Duration>,
    /// Bytes of committed entries each node applies per step, if not the
    /// default: in some seeds one entry at a time, so the apply lags the
    /// commit.
    pub max_apply_bytes: Option<usize>,
    /// Whether nodes run a pre-vote round (off in three seeds in ten: a
    /// node cut off raises its term at every timeout, and a deposed leader
    /// comes back with a term higher than the cluster's).
    pub pre_vote: bool,
    /// Lease reads instead of ReadIndex (half the seeds), with members'
    /// clocks running at rates up to this many percent apart (within the
    /// drift the lease allows for).
    pub lease_drift_percent: Option<u64>,
}

impl FaultMix {
    /// The mix of `seed`, drawn from a generator of its own. Each kind's
    /// standard weight is left out (0x), kept (1x) or made frequent (4x);
    /// healing always stays, and at least one other kind is drawn.
    pub fn for_seed(seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5a4a_4d11_0000_0001);
        let mut weights: Vec<(Fault, u32)> = STANDARD
            .iter()
            .map(|&(fault, w)| {
                let times = match (fault, rng.random_range(0..10)) {
                    (Fault::Heal, _) => 1,
                    (_, 0..=2) => 0,
                    (_, 3..=6) => 1,
                    _ => 4,
                };
                (fault, w * times)
            })
            .collect();
        if weights.iter().all(|&(f, w)| f == Fault::Heal || w == 0) {
            let (fault, w) = STANDARD[rng.random_range(0..STANDARD.len() - 1)];
            if let Some(slot) = weights.iter_mut().find(|(f, _)| *f == fault) {
                slot.1 = w;
            }
        }
        let net = net_faults(&mut rng, seed);
        let slow_disk = rng
            .random_bool(0.3)
            .then(|| Duration::from_millis(rng.random_range(20..150)));
        let max_apply_bytes = rng.random_bool(0.3).then(|| rng.random_range(1..256));
        let pre_vote = rng.random_bool(0.7);
        let lease_drift_percent = rng.random_bool(0.5).then(|| rng.random_range(0..=10));
        FaultMix {
            pre_vote,
            lease_drift_percent,
            weights,
            net,
            slow_disk,
            max_apply_bytes,
        }
    }

    /// This mix narrowed to the nemesis faults `kinds` (each at its
    /// standard weight; healing stays) with no message faults, no slow disk
    /// and no apply lag: what one kind of fault finds on its own.
    pub fn only(&self, kinds: &[Fault]) -> Self {
        let weights = STANDARD
            .iter()
            .map(|&(f, w)| {
                (
                    f,
                    if f == Fault::Heal || kinds.contains(&f) {
                        w
                    } else {
                        0
                    },
                )
            })
            .collect();
        FaultMix {
            weights,
            net: NetFaults {
                seed: self.net.seed,
                ..NetFaults::default()
            },
            slow_disk: None,
            max_apply_bytes: None,
            pre_vote: self.pre_vote,
            lease_drift_percent: self.lease_drift_percent,
        }
    }

    /// The kind named `name` (as printed in a mix), if any.
    pub fn kind_named(name: &str) -> Option<Fault> {
        STANDARD
            .iter()
            .map(|&(f, _)| f)
            .find(|f| format!("{f:?}").eq_ignore_ascii_case(name.trim()))
    }

    /// The next fault, drawn by weight.
    pub fn pick(&self, rng: &mut ChaCha8Rng) -> Fault {
        let total: u32 = self.weights.iter().map(|&(_, w)| w).sum();
        let mut at = rng.random_range(0..total.max(1));
        for &(fault, w) in &self.weights {
            if at < w {
                return fault;
            }
            at -= w;
        }
        Fault::Heal
    }
}

/// Message faults: each kind is off, mild or heavy, drawn independently.
fn net_faults(rng: &mut ChaCha8Rng, seed: u64) -> NetFaults {
    let mut level = |mild: f64, heavy: f64| match rng.random_range(0..3) {
        0 => 0.0,
        1 => mild,
        _ => heavy,
    };
    let drop_probability = level(0.01, 0.05);
    let duplicate_probability = level(0.01, 0.03);
    let delay_probability = level(0.03, 0.1);
    let long_delay_probability = level(0.002, 0.01);
    let replay_probability = level(0.005, 0.02);
    NetFaults {
        drop_probability,
        duplicate_probability,
        delay_probability,
        max_delay: Duration::from_millis(rng.random_range(1..100)),
        long_delay_probability,
        // Up to several election timeouts (150-300 ms each).
        long_delay_max: Duration::from_millis(rng.random_range(500..3000)),
        replay_probability,
        seed,
        switches: None,
    }
}

impl fmt::Display for FaultMix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("fault mix:")?;
        for &(fault, w) in &self.weights {
            write!(f, " {fault:?}={w}")?;
        }
        let n = &self.net;
        write!(
            f,
            "; messages: drop {:.3} dup {:.3} delay {:.3} (<{} ms) time-travel {:.3} (<{} ms) replay {:.3}",
            n.drop_probability,
            n.duplicate_probability,
            n.delay_probability,
            n.max_delay.as_millis(),
            n.long_delay_probability,
            n.long_delay_max.as_millis(),
            n.replay_probability
        )?;
        if let Some(d) = self.slow_disk {
            write!(f, "; one node's fsyncs up to {} ms", d.as_millis())?;
        }
        if let Some(b) = self.max_apply_bytes {
            write!(f, "; applies {b} bytes per step")?;
        }
        if !self.pre_vote {
            write!(f, "; no pre-vote")?;
        }
        if let Some(d) = self.lease_drift_percent {
            write!(f, "; lease reads, clock rates up to {d}% apart")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_alone_fixes_the_mix_and_mixes_differ() {
        let a = FaultMix::for_seed(7).to_string();
        assert_eq!(a, FaultMix::for_seed(7).to_string());
        let distinct: std::collections::BTreeSet<String> =
            (0..50).map(|s| FaultMix::for_seed(s).to_string()).collect();
        assert!(
            distinct.len() > 40,
            "{} distinct mixes of 50",
            distinct.len()
        );
        for s in 0..200 {
            let mix = FaultMix::for_seed(s);
            assert!(
                mix.weights.iter().any(|&(f, w)| f != Fault::Heal && w > 0),
                "seed {s} injects something"
            );
        }
    }
}
