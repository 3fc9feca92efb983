//! Raft safety invariants, checked continuously from the events every node
//! emits (`kv_net::node::events`):
//!
//! - Election Safety: at most one leader per term;
//! - Leader Completeness: a new leader's log holds every entry applied
//!   (hence committed) anywhere before it won;
//! - State Machine Safety: no two nodes apply different entries at one
//!   index, and their state machines agree after each index;
//! - the commit index of a running node never moves back.
//!
//! Log Matching follows from the last two for every applied prefix; the
//! seeded engine tests check it directly on every append.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use kv_engine::raft::{Role, Standing};
use kv_net::node::events::{EventSink, NodeEvent};

/// What the checker has learned so far.
#[derive(Default)]
struct State {
    leaders: BTreeMap<u64, u64>,
    /// index -> (term, data hash) of every applied entry.
    applied: BTreeMap<u64, (u64, u64)>,
    /// index -> the highest term any node had reached when the entry was
    /// first applied: it was committed in that term or earlier, so every
    /// leader of a later term must hold it.
    committed_by: BTreeMap<u64, u64>,
    /// Highest term seen in any event.
    max_term: u64,
    /// Each node's latest (term, role).
    roles: BTreeMap<u64, (u64, Role)>,
    /// index -> state machine digest after applying it.
    digests: BTreeMap<u64, u64>,
    commit: BTreeMap<u64, u64>,
    last_applied: BTreeMap<u64, u64>,
    /// Each node's latest standing (voter, discovering, recovering) and the
    /// event count when it was reported.
    standings: BTreeMap<u64, Standing>,
    standing_at: BTreeMap<u64, u64>,
    /// Every local snapshot made durable: (node, index, bytes, millis).
    snapshots: Vec<SnapshotSaved>,
    /// Per node, how many durability promises and saved snapshots it
    /// reported (the nemesis crashes nodes at these moments).
    crash_points: BTreeMap<u64, u64>,
    violations: Vec<String>,
    trace: String,
    events: u64,
}

/// A local snapshot made durable, as a node reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotSaved {
    /// The node.
    pub node: u64,
    /// Its index.
    pub index: u64,
    /// Bytes of state.
    pub bytes: u64,
    /// Milliseconds from capture to durable.
    pub millis: u64,
}

/// Collects node events, checks the invariants, and keeps a compact trace.
pub struct InvariantChecker {
    state: Mutex<State>,
    clock: Box<dyn Fn() -> u64 + Send + Sync>,
    keep_trace: bool,
}

impl InvariantChecker {
    /// A checker that stamps events with `clock()` (milliseconds) and keeps a
    /// trace of role changes if `keep_trace`.
    pub fn new(clock: impl Fn() -> u64 + Send + Sync + 'static, keep_trace: bool) -> Self {
        InvariantChecker {
            state: Mutex::new(State::default()),
            clock: Box::new(clock),
            keep_trace,
        }
    }

    /// Violations found so far.
    pub fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }

    /// The compact trace (role changes, installs, restarts).
    pub fn trace(&self) -> String {
        self.lock().trace.clone()
    }

    /// Appends a line of the harness's own (faults, heals) to the trace.
    pub fn note(&self, line: &str) {
        let at = (self.clock)();
        let mut s = self.lock();
        if self.keep_trace {
            let _ = writeln!(s.trace, "{at:>7} {line}");
        }
    }

    /// The node that most recently claimed leadership of the highest term
    /// among those still claiming it (what a nemesis aims at).
    pub fn current_leader(&self) -> Option<u64> {
        let s = self.lock();
        s.roles
            .iter()
            .filter(|(_, (_, r))| *r == Role::Leader)
            .max_by_key(|(_, (t, _))| *t)
            .map(|(&n, _)| n)
    }

    /// Records a failure found outside the event stream (a node that
    /// refused to start, say).
    pub fn violation(&self, what: &str) {
        let at = (self.clock)();
        self.lock().violations.push(format!("t={at}ms {what}"));
    }

    /// The leader of each term that had one, by term.
    pub fn leaders(&self) -> BTreeMap<u64, u64> {
        self.lock().leaders.clone()
    }

    /// Every local snapshot made durable so far.
    pub fn snapshots_saved(&self) -> Vec<SnapshotSaved> {
        self.lock().snapshots.clone()
    }

    /// Number of events seen.
    pub fn event_count(&self) -> u64 {
        self.lock().events
    }

    /// The highest index applied anywhere and its digest.
    pub fn highest_applied(&self) -> Option<(u64, u64)> {
        let s = self.lock();
        s.digests.iter().next_back().map(|(&i, &d)| (i, d))
    }

    /// Each node's last applied index.
    pub fn last_applied(&self) -> BTreeMap<u64, u64> {
        self.lock().last_applied.clone()
    }

    /// The number of events seen so far: a point in the event stream.
    pub fn now(&self) -> u64 {
        self.lock().events
    }

    /// The role `node` last reported.
    pub fn role_of(&self, node: u64) -> Option<Role> {
        self.lock().roles.get(&node).map(|&(_, r)| r)
    }

    /// The commit index `node` last reported (0 before its first).
    pub fn commit_of(&self, node: u64) -> u64 {
        self.lock().commit.get(&node).copied().unwrap_or(0)
    }

    /// The node's standing if it reported one after event `since`.
    pub fn standing_since(&self, node: u64, since: u64) -> Option<Standing> {
        let s = self.lock();
        match s.standing_at.get(&node) {
            Some(&at) if at > since => s.standings.get(&node).copied(),
            _ => None,
        }
    }

    /// Nodes whose latest report says they are not voters.
    pub fn not_voters(&self) -> Vec<u64> {
        self.lock()
            .standings
            .iter()
            .filter(|(_, &st)| st != Standing::Voter)
            .map(|(&n, _)| n)
            .collect()
    }

    /// Each node's last reported state, one line each, for liveness
    /// failures: role, term, commit, applied, standing.
    pub fn describe_nodes(&self, ids: &[u64]) -> String {
        let s = self.lock();
        ids.iter()
            .map(|id| {
                let (term, role) = s.roles.get(id).copied().unwrap_or((0, Role::Follower));
                format!(
                    "n{id} {role:?} term {term} commit {} applied {} {:?}",
                    s.commit.get(id).copied().unwrap_or(0),
                    s.last_applied.get(id).copied().unwrap_or(0),
                    s.standings.get(id).copied().unwrap_or(Standing::Voter),
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The digest recorded after applying `index`, if any node applied it.
    pub fn digest_at(&self, index: u64) -> Option<u64> {
        self.lock().digests.get(&index).copied()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock already fails the run; keep going
        // so the violation list survives.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many moments `node` reported where a crash must cost nothing:
    /// messages promising something durable, snapshots saved.
    pub fn crash_points(&self, node: u64) -> u64 {
        self.lock().crash_points.get(&node).copied().unwrap_or(0)
    }

    fn check(&self, at: u64, event: NodeEvent) {
        let mut s = self.lock();
        s.events += 1;
        let trace = self.keep_trace;
        match event {
            NodeEvent::Started {
                node,
                term,
                commit,
                snapshot_index,
                standing,
            } => s.on_started(at, trace, node, term, commit, snapshot_index, standing),
            NodeEvent::Role {
                node,
                term,
                role,
                leader,
                standing,
            } => s.on_role(at, trace, node, term, role, leader, standing),
            NodeEvent::BecameLeader {
                node,
                term,
                first_index,
                last_index,
                term_runs,
            } => s.on_became_leader(at, node, term, (first_index, last_index), &term_runs),
            NodeEvent::Commit { node, commit } => {
                let before = s.commit.insert(node, commit).unwrap_or(0);
                if commit < before {
                    s.fail(
                        at,
                        format!("n{node} commit index moved back {before} -> {commit}"),
                    );
                }
            }
            NodeEvent::Applied {
                node,
                index,
                term,
                data_hash,
                digest,
            } => s.on_applied(at, node, (index, term, data_hash), digest),
            NodeEvent::SnapshotSaved {
                node,
                index,
                bytes,
                millis,
            } => {
                *s.crash_points.entry(node).or_default() += 1;
                s.snapshots.push(SnapshotSaved {
                    node,
                    index,
                    bytes,
                    millis,
                });
            }
            NodeEvent::Promised { node, .. } => {
                *s.crash_points.entry(node).or_default() += 1;
            }
            NodeEvent::InstalledSnapshot {
                node,
                index,
                digest,
            } => s.on_installed_snapshot(at, trace, node, index, digest),
        }
    }
}

impl State {
    fn fail(&mut self, at: u64, msg: String) {
        self.violations.push(format!("t={at}ms {msg}"));
    }

    fn note_standing(&mut self, node: u64, standing: Standing) -> Option<Standing> {
        let before = self.standings.insert(node, standing);
        if before != Some(standing) {
            self.standing_at.insert(node, self.events);
        }
        before
    }

    #[allow(clippy::too_many_arguments)]
    fn on_started(
        &mut self,
        at: u64,
        trace: bool,
        node: u64,
        term: u64,
        commit: u64,
        snapshot_index: u64,
        standing: Standing,
    ) {
        self.roles.insert(node, (term, Role::Follower));
        self.commit.insert(node, commit);
        self.last_applied.insert(node, snapshot_index);
        self.standings.remove(&node);
        self.note_standing(node, standing);
        if trace {
            let _ = writeln!(
                self.trace,
                "{at:>7} n{node} started term {term} commit {commit} {standing:?}"
            );
        }
    }

    /// Election Safety: at most one leader per term, and only a voter leads.
    #[allow(clippy::too_many_arguments)]
    fn on_role(
        &mut self,
        at: u64,
        trace: bool,
        node: u64,
        term: u64,
        role: Role,
        leader: Option<u64>,
        standing: Standing,
    ) {
        self.max_term = self.max_term.max(term);
        self.roles.insert(node, (term, role));
        let before = self.note_standing(node, standing);
        if trace {
            let standing = if before == Some(standing) {
                String::new()
            } else {
                format!(" {standing:?}")
            };
            let _ = writeln!(
                self.trace,
                "{at:>7} n{node} {role:?} term {term} leader {leader:?}{standing}"
            );
        }
        if role != Role::Leader {
            return;
        }
        if standing != Standing::Voter {
            self.fail(at, format!("n{node} leads term {term} while {standing:?}"));
        }
        if let Some(&other) = self.leaders.get(&term) {
            if other != node {
                self.fail(
                    at,
                    format!("two leaders in term {term}: n{other} and n{node}"),
                );
            }
        }
        self.leaders.insert(term, node);
    }

    /// Leader Completeness: a leader holds every entry committed before
    /// its term (`log`: its first and last index; `term_runs`: where each
    /// term of its log starts).
    fn on_became_leader(
        &mut self,
        at: u64,
        node: u64,
        term: u64,
        log: (u64, u64),
        term_runs: &[(u64, u64)],
    ) {
        let (first_index, last_index) = log;
        let term_at = |index: u64| -> Option<u64> {
            if index < first_index || index > last_index {
                return None;
            }
            term_runs
                .iter()
                .take_while(|&&(start, _)| start <= index)
                .last()
                .map(|&(_, t)| t)
        };
        let missing: Vec<(u64, u64)> = self
            .applied
            .range(first_index..)
            .filter(|(i, _)| self.committed_by.get(i).is_some_and(|&c| c < term))
            .filter(|(&i, &(t, _))| term_at(i) != Some(t))
            .map(|(&i, &(t, _))| (i, t))
            .take(3)
            .collect();
        if !missing.is_empty() {
            self.fail(
                at,
                format!("leader n{node} of term {term} lacks committed entries {missing:?}"),
            );
        }
    }

    /// State Machine Safety: each index is applied with one entry
    /// everywhere, in order, and leaves the same state (`entry`: index,
    /// term and a hash of the data).
    fn on_applied(&mut self, at: u64, node: u64, entry: (u64, u64, u64), digest: Option<u64>) {
        let (index, term, data_hash) = entry;
        if let Some(&prev) = self.last_applied.get(&node) {
            if index != prev + 1 {
                self.fail(at, format!("n{node} applied {index} after {prev}"));
            }
        }
        self.last_applied.insert(node, index);
        match self.applied.get(&index) {
            Some(&(t, h)) if (t, h) != (term, data_hash) => self.fail(
                at,
                format!(
                    "n{node} applied ({index}, {term}) but ({index}, {t}) was applied elsewhere"
                ),
            ),
            Some(_) => {}
            None => {
                self.applied.insert(index, (term, data_hash));
                let bound = self.max_term.max(term);
                self.committed_by.insert(index, bound);
            }
        }
        let Some(d) = digest else { return };
        match self.digests.get(&index) {
            Some(&other) if other != d => self.fail(
                at,
                format!("n{node} state after index {index} differs from another node's"),
            ),
            Some(_) => {}
            None => {
                self.digests.insert(index, d);
            }
        }
    }

    fn on_installed_snapshot(&mut self, at: u64, trace: bool, node: u64, index: u64, digest: u64) {
        self.last_applied.insert(node, index);
        if trace {
            let _ = writeln!(self.trace, "{at:>7} n{node} installed snapshot at {index}");
        }
        if let Some(&other) = self.digests.get(&index) {
            if other != digest {
                self.fail(
                    at,
                    format!(
                        "n{node} installed a snapshot at {index} that differs from applied state"
                    ),
                );
            }
        }
    }
}

impl EventSink for InvariantChecker {
    fn emit(&self, event: NodeEvent) {
        let at = (self.clock)();
        self.check(at, event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checker() -> InvariantChecker {
        InvariantChecker::new(|| 0, true)
    }

    fn applied(node: u64, index: u64, term: u64, data_hash: u64) -> NodeEvent {
        NodeEvent::Applied {
            node,
            index,
            term,
            data_hash,
            digest: Some(data_hash),
        }
    }

    #[test]
    fn two_leaders_in_one_term_is_a_violation() {
        let c = checker();
        c.emit(NodeEvent::Role {
            node: 1,
            term: 3,
            role: Role::Leader,
            leader: Some(1),
            standing: Standing::Voter,
        });
        c.emit(NodeEvent::Role {
            node: 2,
            term: 4,
            role: Role::Leader,
            leader: Some(2),
            standing: Standing::Voter,
        });
        assert!(c.violations().is_empty());
        c.emit(NodeEvent::Role {
            node: 3,
            term: 4,
            role: Role::Leader,
            leader: Some(3),
            standing: Standing::Voter,
        });
        assert_eq!(c.violations().len(), 1);
    }

    #[test]
    fn different_entries_applied_at_one_index_is_a_violation() {
        let c = checker();
        c.emit(applied(1, 1, 1, 10));
        c.emit(applied(2, 1, 1, 10));
        assert!(c.violations().is_empty());
        c.emit(applied(3, 1, 2, 11));
        assert!(c.violations()[0].contains("applied (1, 2)"));
    }

    #[test]
    fn a_leader_missing_a_committed_entry_is_a_violation() {
        let c = checker();
        c.emit(applied(1, 1, 1, 10));
        c.emit(applied(1, 2, 2, 11));
        // A leader of an older term (elected late, behind a partition) is not bound.
        c.emit(NodeEvent::BecameLeader {
            node: 4,
            term: 2,
            first_index: 1,
            last_index: 1,
            term_runs: vec![(1, 1)],
        });
        assert!(c.violations().is_empty());
        c.emit(NodeEvent::BecameLeader {
            node: 2,
            term: 3,
            first_index: 1,
            last_index: 2,
            term_runs: vec![(1, 1), (2, 2)],
        });
        assert!(c.violations().is_empty());
        c.emit(NodeEvent::BecameLeader {
            node: 3,
            term: 4,
            first_index: 1,
            last_index: 1,
            term_runs: vec![(1, 1)],
        });
        assert_eq!(c.violations().len(), 1);
    }

    #[test]
    fn commit_moving_back_within_a_life_is_a_violation_but_not_across_restarts() {
        let c = checker();
        c.emit(NodeEvent::Commit { node: 1, commit: 5 });
        c.emit(NodeEvent::Started {
            node: 1,
            term: 2,
            commit: 3,
            snapshot_index: 0,
            standing: Standing::Voter,
        });
        c.emit(NodeEvent::Commit { node: 1, commit: 4 });
        assert!(c.violations().is_empty());
        c.emit(NodeEvent::Commit { node: 1, commit: 2 });
        assert_eq!(c.violations().len(), 1);
    }
}
