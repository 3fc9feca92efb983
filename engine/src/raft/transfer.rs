//! Leadership transfer (thesis §3.10) and lease reads (thesis §6.4.1): the
//! two ways a leader's own view of time and of its followers decides who
//! may lead, kept together because the second must stop the moment the
//! first begins.
//!
//! Transfer: the leader stops taking proposals, waits until the target
//! holds its whole log and that log is committed (so nothing it appended is
//! left with an unknown outcome), then sends TimeoutNow; the target holds
//! an election at once, which voters do not ignore for having a leader.
//! The leader gives up after an election timeout and takes proposals again.
//!
//! Lease: every heartbeat round is dated with the leader's tick; once a
//! majority has answered a round sent at tick `t`, no other leader can be
//! elected before `t + lease_ticks` (see `Config::lease_ticks`), so reads
//! are served at once until then. Lease reads stop for the rest of the term
//! once this leader has sent a TimeoutNow, which lets a candidate past the
//! voters' leases whenever it arrives.

use kv_proto::raft::{message::Body, TimeoutNow};

use super::config::ReadMode;
use super::core::RaftCore;
use super::ready::{ProposeError, Role};

/// A transfer in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Transfer {
    /// Who is to lead next.
    pub(super) target: u64,
    /// Ticks since it began; it is given up after an election timeout.
    pub(super) elapsed: u64,
    /// TimeoutNow has gone out.
    pub(super) sent: bool,
}

/// A leader's lease: the heartbeat rounds it sent, dated, and how long its
/// leadership is known to hold.
#[derive(Debug, Default)]
pub(super) struct Lease {
    /// `(round, tick it was sent)`, oldest first, rounds increasing.
    sent: std::collections::VecDeque<(u64, u64)>,
    /// No other leader can exist before this tick.
    until: u64,
    /// A TimeoutNow went out in this term: no lease reads any more.
    given_up: bool,
}

/// Rounds remembered at most (a round is forgotten once a later one is
/// acknowledged by a majority, so this bounds only a leader cut off from
/// its quorum).
const DATED_ROUNDS_MAX: usize = 1024;

impl Lease {
    /// A new term's leader starts with no lease.
    pub(super) fn reset(&mut self) {
        *self = Lease::default();
    }

    /// Round `round` went out at `tick`.
    pub(super) fn sent(&mut self, round: u64, tick: u64) {
        debug_assert!(
            self.sent
                .back()
                .is_none_or(|&(r, t)| r < round && t <= tick),
            "rounds and their ticks only grow"
        );
        if self.sent.len() == DATED_ROUNDS_MAX {
            self.sent.pop_front();
        }
        self.sent.push_back((round, tick));
    }

    /// A majority has answered every round up to `round`: the lease runs
    /// `lease_ticks` from when the latest of them was sent.
    pub(super) fn acknowledged(&mut self, round: u64, lease_ticks: u64) {
        let mut latest = None;
        while let Some(&(r, tick)) = self.sent.front() {
            if r > round {
                break;
            }
            latest = Some(tick);
            self.sent.pop_front();
        }
        if let Some(tick) = latest {
            self.until = self.until.max(tick + lease_ticks);
        }
    }

    /// Whether reads may be served on the lease at `now`.
    pub(super) fn holds(&self, now: u64) -> bool {
        !self.given_up && now < self.until
    }
}

impl RaftCore {
    /// Hands leadership to `to`, or to the most up-to-date voter, once it
    /// holds the whole log and the log is committed; meanwhile proposals
    /// are refused (`Transferring`). Returns the chosen member. The
    /// transfer is given up after an election timeout, and the election it
    /// starts may still fail (then another one follows).
    pub fn transfer_leadership(&mut self, to: Option<u64>) -> Result<u64, ProposeError> {
        let target = self.transfer_target(to)?;
        tracing::info!(
            node = self.cfg.id,
            term = self.term,
            to = target,
            "handing leadership over"
        );
        self.transfer = Some(Transfer {
            target,
            elapsed: 0,
            sent: false,
        });
        self.maybe_send_timeout_now();
        Ok(target)
    }

    /// Hands leadership over at once, without waiting for anything to
    /// commit: this node's disk failed, so nothing more will commit here.
    pub fn hand_over_now(&mut self) -> Result<u64, ProposeError> {
        let target = self.transfer_target(None)?;
        tracing::info!(
            node = self.cfg.id,
            term = self.term,
            to = target,
            "handing leadership over at once"
        );
        self.send_timeout_now(target);
        Ok(target)
    }

    /// The member leadership is being handed to, if a transfer is on.
    pub fn transferring_to(&self) -> Option<u64> {
        self.transfer.map(|t| t.target)
    }

    fn transfer_target(&self, to: Option<u64>) -> Result<u64, ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        }
        let target = match to {
            Some(id) if self.progress.get(&id).is_some_and(|p| !p.recovering) => Some(id),
            Some(_) => None,
            None => self
                .progress
                .iter()
                .filter(|(_, p)| !p.recovering)
                .max_by_key(|(&id, p)| (p.match_index, std::cmp::Reverse(id)))
                .map(|(&id, _)| id),
        };
        target.ok_or(ProposeError::NoTransferTarget)
    }

    /// Sends TimeoutNow once the target holds the whole log and all of it
    /// is committed.
    pub(super) fn maybe_send_timeout_now(&mut self) {
        let Some(t) = self.transfer.filter(|t| !t.sent) else {
            return;
        };
        debug_assert_eq!(self.role, Role::Leader, "only a leader transfers");
        let last = self.log.last_index();
        let caught_up = self
            .progress
            .get(&t.target)
            .is_some_and(|p| !p.recovering && p.match_index == last);
        if !caught_up || self.log.committed() < last {
            return;
        }
        self.transfer = Some(Transfer { sent: true, ..t });
        self.send_timeout_now(t.target);
    }

    fn send_timeout_now(&mut self, target: u64) {
        debug_assert_ne!(target, self.cfg.id, "a leader hands over to another member");
        self.lease.given_up = true;
        self.send(target, Body::TimeoutNow(TimeoutNow {}));
    }

    /// A transfer not done within an election timeout is given up.
    pub(super) fn tick_transfer(&mut self) {
        let Some(t) = self.transfer.as_mut() else {
            return;
        };
        t.elapsed += 1;
        if t.elapsed >= self.cfg.election_ticks {
            tracing::warn!(
                node = self.cfg.id,
                term = self.term,
                to = t.target,
                "leadership transfer timed out; taking proposals again"
            );
            self.transfer = None;
        }
    }

    /// For a leader: ticks since it last heard from a majority of voters
    /// (itself included), so an operator's health check can tell a leader
    /// cut off from its quorum before check-quorum deposes it. None when
    /// not leading or not yet heard from a majority in this term.
    pub fn quorum_contact_age(&self) -> Option<u64> {
        if self.role != Role::Leader {
            return None;
        }
        let mut heard: Vec<u64> = self
            .progress
            .values()
            .filter(|p| !p.recovering && p.heard_at > 0)
            .map(|p| p.heard_at)
            .collect();
        heard.sort_unstable_by(|a, b| b.cmp(a));
        let others_needed = super::quorum::majority(self.cfg.voters.len()) - 1;
        if others_needed == 0 {
            return Some(0);
        }
        heard
            .get(others_needed - 1)
            .map(|&at| self.ticks.saturating_sub(at))
    }

    /// The runtime missed `ticks` ticks (its process stalled, a GC pause, a
    /// suspended VM) and does not replay them: they count toward leases
    /// running out, never toward elections (a burst of quorum checks would
    /// depose a healthy leader). Without this a stalled leader would wake
    /// with its lease as fresh as when it stopped.
    pub fn missed_ticks(&mut self, ticks: u64) {
        self.ticks = self.ticks.saturating_add(ticks);
    }

    /// Starts a heartbeat round, dated for the lease.
    pub(super) fn start_round(&mut self) -> u64 {
        let round = self.reads.start_round();
        if self.cfg.read_mode == ReadMode::Lease {
            self.lease.sent(round, self.ticks);
        }
        round
    }

    /// Whether a read may be served now on the lease, without a round.
    pub(super) fn lease_holds(&self) -> bool {
        self.cfg.read_mode == ReadMode::Lease
            && self.role == Role::Leader
            && self.transfer.is_none()
            && self.lease.holds(self.ticks)
    }

    /// For lease reads, a member that has just started grants no vote for
    /// an election timeout, as if it had just heard from a leader: it may
    /// have heard from one before it stopped, whose lease still runs.
    pub(super) fn in_start_up_lease(&self) -> bool {
        self.cfg.read_mode == ReadMode::Lease && self.ticks < self.cfg.election_ticks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_runs_from_when_the_acknowledged_round_was_sent() {
        let mut lease = Lease::default();
        lease.sent(1, 10);
        lease.sent(2, 13);
        lease.sent(3, 16);
        assert!(!lease.holds(10), "no lease before a majority answered");
        lease.acknowledged(2, 8);
        assert!(
            lease.holds(20),
            "round 2 was sent at 13: the lease runs to 21"
        );
        assert!(!lease.holds(21));
        lease.acknowledged(2, 8);
        assert!(!lease.holds(21), "the same round again extends nothing");
        lease.acknowledged(3, 8);
        assert!(lease.holds(23) && !lease.holds(24));
    }

    #[test]
    fn a_lease_given_up_stays_given_up() {
        let mut lease = Lease::default();
        lease.sent(1, 0);
        lease.acknowledged(1, 100);
        lease.given_up = true;
        assert!(!lease.holds(1));
    }
}
