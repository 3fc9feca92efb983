//! Tests of the rules of the Raft paper (Ongaro & Ousterhout, "In Search of
//! an Understandable Consensus Algorithm", Figure 2 and §5.1-§5.4, §7),
//! each named after its rule and quoting the sentence it checks, in the
//! manner of etcd-io/raft's `raft_paper_test.go`. Each drives single cores
//! with crafted messages and checks the exact outputs of `ready()`.
// A test panics on any failure: that is how it reports.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use kv_engine::raft::{
    Config, ProposeError, RaftCore, Ready, Restored, Role, SnapshotChunkIn, SnapshotInfo,
};
use kv_proto::raft::{
    message::Body, AppendEntries, AppendEntriesResponse, Entry, HardState, InstallSnapshot,
    InstallSnapshotResponse, Message, RequestVote, RequestVoteResponse, SnapshotMeta,
};

fn config(id: u64, n: u64) -> Config {
    let mut cfg = Config::new(id, (1..=n).collect());
    cfg.pre_vote = false;
    cfg.check_quorum = false;
    cfg
}

fn core(id: u64, n: u64) -> RaftCore {
    RaftCore::new(config(id, n), Restored::default()).unwrap()
}

fn core_with_log(id: u64, n: u64, term: u64, terms: &[u64]) -> RaftCore {
    let entries = terms
        .iter()
        .enumerate()
        .map(|(i, &t)| entry(i as u64 + 1, t))
        .collect();
    let restored = Restored {
        hard_state: HardState {
            term,
            vote: 0,
            commit: 0,
            ..Default::default()
        },
        snapshot: None,
        entries,
        ..Default::default()
    };
    RaftCore::new(config(id, n), restored).unwrap()
}

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: Bytes::from(format!("e{index}")),
    }
}

fn msg(from: u64, to: u64, term: u64, body: Body) -> Message {
    Message {
        from,
        to,
        term,
        body: Some(body),
    }
}

fn append(
    from: u64,
    to: u64,
    term: u64,
    prev: (u64, u64),
    entries: Vec<Entry>,
    commit: u64,
) -> Message {
    let ae = AppendEntries {
        prev_log_index: prev.0,
        prev_log_term: prev.1,
        entries,
        leader_commit: commit,
        round: 0,
    };
    msg(from, to, term, Body::AppendEntries(ae))
}

fn vote(from: u64, to: u64, term: u64, granted: bool) -> Message {
    msg(
        from,
        to,
        term,
        Body::RequestVoteResponse(RequestVoteResponse {
            pre_vote: false,
            granted,
        }),
    )
}

fn request_vote(from: u64, to: u64, term: u64, last: (u64, u64)) -> Message {
    let rv = RequestVote {
        pre_vote: false,
        last_log_index: last.0,
        last_log_term: last.1,
        transfer: false,
    };
    msg(from, to, term, Body::RequestVote(rv))
}

/// Takes a Ready and reports its writes durable, as a driver would.
fn ready_and_persist(c: &mut RaftCore) -> Ready {
    let rd = c.ready();
    if let Some((index, term)) = rd.persist_point() {
        c.on_persisted(index, term);
    }
    rd
}

fn tick_until(c: &mut RaftCore, role: Role) -> u64 {
    for ticks in 1..=1000 {
        c.tick();
        if c.role() == role {
            return ticks;
        }
    }
    panic!("never became {role:?}");
}

/// Node 1 of `n`, elected leader of term 1 with its no-op committed.
fn leader(n: u64) -> RaftCore {
    let mut c = core(1, n);
    tick_until(&mut c, Role::Candidate);
    let _ = ready_and_persist(&mut c);
    for p in 2..=n {
        c.step(vote(p, 1, 1, true));
    }
    assert_eq!(c.role(), Role::Leader);
    let _ = ready_and_persist(&mut c);
    for p in 2..=n {
        c.step(ack(p, 1, 1));
    }
    let _ = ready_and_persist(&mut c);
    assert_eq!(c.log().committed(), 1, "the no-op is committed");
    c
}

/// Node 1 with `cfg`, elected leader of term 1 by node 2's vote, its no-op
/// acknowledged by node 2 (a majority of 2 or 3 nodes).
fn elected_with(cfg: Config) -> RaftCore {
    let mut c = RaftCore::new(cfg, Restored::default()).unwrap();
    tick_until(&mut c, Role::Candidate);
    let _ = ready_and_persist(&mut c);
    c.step(vote(2, 1, 1, true));
    let _ = ready_and_persist(&mut c);
    c.step(ack(2, 1, 1));
    let _ = ready_and_persist(&mut c);
    c
}

fn ack(from: u64, term: u64, match_index: u64) -> Message {
    let r = AppendEntriesResponse {
        success: true,
        match_index,
        ..Default::default()
    };
    msg(from, 1, term, Body::AppendEntriesResponse(r))
}

/// Asserts a Ready's whole output, one line per item in the compact form of
/// `kv_engine::raft::display` (so nothing unexpected hides beside what a
/// test looks at).
#[track_caller]
fn assert_ready(rd: &Ready, expected: &[&str]) {
    let got = rd.to_string();
    let got: Vec<&str> = got.lines().collect();
    assert_eq!(got, expected, "the whole Ready");
}

/// §5.1: "If RPC request or response contains term T > currentTerm: set
/// currentTerm = T, convert to follower."
#[test]
fn any_node_adopts_a_higher_term_and_becomes_follower() {
    for start in [Role::Follower, Role::Candidate, Role::Leader] {
        let mut c = match start {
            Role::Leader => leader(3),
            _ => core(1, 3),
        };
        if start == Role::Candidate {
            tick_until(&mut c, Role::Candidate);
        }
        let before = c.term();
        c.step(append(2, 1, before + 5, (0, 0), vec![], 0));
        assert_eq!(
            (c.role(), c.term(), c.leader()),
            (Role::Follower, before + 5, Some(2)),
            "from {start:?}"
        );
        assert_eq!(c.vote(), 0, "a new term starts without a vote");
    }
}

/// §5.1: "If a server receives a request with a stale term number, it
/// rejects the request" (and the response tells the stale leader the term).
#[test]
fn a_request_with_a_stale_term_is_rejected_with_the_current_term() {
    let mut c = core_with_log(1, 3, 5, &[1, 2]);
    c.step(append(2, 1, 4, (2, 2), vec![entry(3, 4)], 3));
    assert_eq!(c.log().last_index(), 2, "nothing appended");
    assert_ready(
        &c.ready(),
        &[
            "messages:",
            "  1->2 MsgAppResp term=5 rejected=0 hint=0@0 round=0",
        ],
    );
    c.step(vote(2, 1, 4, true));
    assert_eq!(c.role(), Role::Follower, "a stale vote changes nothing");
}

/// §5.2: "If a follower receives no communication over a period of time
/// called the election timeout ... it increments its current term and
/// transitions to candidate state. It then votes for itself and issues
/// RequestVote RPCs in parallel to each of the other servers."
#[test]
fn a_follower_that_times_out_becomes_candidate_and_asks_for_votes() {
    let mut c = core_with_log(1, 3, 2, &[1, 2]);
    tick_until(&mut c, Role::Candidate);
    assert_eq!((c.term(), c.vote()), (3, 1));
    // The vote requests wait until the vote for self is durable.
    assert_ready(
        &c.ready(),
        &[
            "state: Candidate term=3 leader=none",
            "hard state: term=3 vote=1 commit=0",
            "after fsync:",
            "  1->2 MsgVote term=3 last=2@2",
            "  1->3 MsgVote term=3 last=2@2",
        ],
    );
}

/// Thesis §9.6: a pre-candidate asks whether it could win before raising
/// its term, so a partitioned node cannot disrupt the cluster.
#[test]
fn a_pre_vote_round_comes_first_and_changes_no_durable_state() {
    let mut cfg = config(1, 3);
    cfg.pre_vote = true;
    let mut c = RaftCore::new(cfg, Restored::default()).unwrap();
    tick_until(&mut c, Role::PreCandidate);
    assert_eq!((c.term(), c.vote()), (0, 0));
    let rd = c.ready();
    assert!(rd.hard_state.is_none());
    assert_eq!(rd.messages.len(), 2, "pre-votes go at once");
    assert!(rd.messages.iter().all(|m| m.term == 1));
    let granted = RequestVoteResponse {
        pre_vote: true,
        granted: true,
    };
    c.step(msg(2, 1, 1, Body::RequestVoteResponse(granted)));
    assert_eq!(
        (c.role(), c.term()),
        (Role::Candidate, 1),
        "a majority of pre-votes starts the real election"
    );
}

/// §5.2: "Raft uses randomized election timeouts ... chosen randomly from a
/// fixed interval"; here [election_ticks, 2 * election_ticks).
#[test]
fn election_timeouts_are_randomized_within_one_to_two_timeouts() {
    let mut seen = std::collections::BTreeSet::new();
    for seed in 0..50 {
        let mut cfg = config(1, 3);
        cfg.seed = seed;
        let mut c = RaftCore::new(cfg, Restored::default()).unwrap();
        let ticks = tick_until(&mut c, Role::Candidate);
        assert!(
            (10..20).contains(&ticks),
            "timeout {ticks} outside [10, 20)"
        );
        seen.insert(ticks);
    }
    assert!(seen.len() > 5, "timeouts vary with the seed: {seen:?}");
}

/// §5.2: "Each server will vote for at most one candidate in a given term,
/// on a first-come-first-served basis."
#[test]
fn a_vote_is_granted_at_most_once_per_term() {
    let mut c = core(1, 3);
    c.step(request_vote(2, 1, 1, (0, 0)));
    c.step(request_vote(3, 1, 1, (0, 0)));
    c.step(request_vote(2, 1, 1, (0, 0)));
    let rd = c.ready();
    assert_eq!(rd.hard_state.map(|h| h.vote), Some(2));
    let grants: Vec<(u64, bool)> = rd
        .persisted_messages
        .iter()
        .map(|m| match &m.body {
            Some(Body::RequestVoteResponse(r)) => (m.to, r.granted),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        grants,
        vec![(2, true), (3, false), (2, true)],
        "the same candidate may ask again"
    );
    assert!(rd.messages.is_empty(), "a vote leaves only once durable");
}

/// §5.4.1: "If the logs have last entries with different terms, then the log
/// with the later term is more up-to-date. If the logs end with the same
/// term, then whichever log is longer is more up-to-date."
#[test]
fn a_vote_goes_only_to_a_log_at_least_as_up_to_date() {
    // (last_log_index, last_log_term) of the candidate.
    for (last, granted) in [
        ((3, 2), true),
        ((2, 3), true),
        ((1, 2), false),
        ((2, 2), true),
        ((9, 1), false),
    ] {
        let mut c = core_with_log(1, 3, 2, &[1, 2]);
        c.step(request_vote(2, 1, 3, last));
        let rd = c.ready();
        let got = matches!(
            rd.persisted_messages[0].body,
            Some(Body::RequestVoteResponse(RequestVoteResponse {
                granted: true,
                ..
            }))
        );
        assert_eq!(got, granted, "candidate last {last:?} against ours (2, 2)");
    }
}

/// §5.2: "A candidate wins an election if it receives votes from a majority
/// of the servers"; §8: it then appends a no-op; §5.3: it sends entries at once.
#[test]
fn a_candidate_with_a_majority_becomes_leader_and_appends_a_no_op() {
    let mut c = core(1, 5);
    tick_until(&mut c, Role::Candidate);
    let _ = ready_and_persist(&mut c);
    c.step(vote(2, 1, 1, true));
    assert_eq!(c.role(), Role::Candidate, "2 of 5 is no majority");
    c.step(vote(3, 1, 1, true));
    assert_eq!(c.role(), Role::Leader);
    // The appends go before the leader's own write is durable.
    assert_ready(
        &c.ready(),
        &[
            "state: Leader term=1 leader=1",
            "entries:",
            "  1@1 noop",
            "messages:",
            "  1->2 MsgApp term=1 log=0@0 commit=0 entries=[1@1 noop] round=0",
            "  1->3 MsgApp term=1 log=0@0 commit=0 entries=[1@1 noop] round=0",
            "  1->4 MsgApp term=1 log=0@0 commit=0 entries=[1@1 noop] round=0",
            "  1->5 MsgApp term=1 log=0@0 commit=0 entries=[1@1 noop] round=0",
        ],
    );
}

/// §5.2: "If the AppendEntries RPC is from a leader whose term is at least
/// as large as the candidate's current term, then the candidate recognizes
/// the leader as legitimate and returns to follower state."
#[test]
fn a_candidate_hearing_from_a_leader_of_its_term_becomes_follower() {
    let mut c = core(1, 3);
    tick_until(&mut c, Role::Candidate);
    c.step(append(2, 1, 1, (0, 0), vec![], 0));
    assert_eq!(
        (c.role(), c.leader(), c.term()),
        (Role::Follower, Some(2), 1)
    );
}

/// §5.2: a candidate that a majority refuses gives up the election.
#[test]
fn a_candidate_refused_by_a_majority_becomes_follower() {
    let mut c = core(1, 3);
    tick_until(&mut c, Role::Candidate);
    c.step(vote(2, 1, 1, false));
    c.step(vote(3, 1, 1, false));
    assert_eq!(c.role(), Role::Follower);
}

/// §5.2: "Leaders send periodic heartbeats (AppendEntries RPCs that carry
/// no log entries) to all followers in order to maintain their authority."
#[test]
fn a_leader_sends_heartbeats_every_heartbeat_interval() {
    let mut c = leader(3);
    let _ = c.ready();
    c.tick();
    assert!(c.ready().messages.is_empty(), "heartbeat_ticks is 2");
    c.tick();
    assert_ready(
        &c.ready(),
        &[
            "messages:",
            "  1->2 MsgApp term=1 log=1@1 commit=1 round=0",
            "  1->3 MsgApp term=1 log=1@1 commit=1 round=0",
        ],
    );
}

/// §5.3: "If a follower does not find an entry in its log with the same
/// index and term, then it refuses the new entries"; the refusal carries a
/// hint so the leader skips a whole conflicting term at once.
#[test]
fn a_follower_refuses_an_append_that_does_not_match_and_hints_where_to_resume() {
    let mut c = core_with_log(1, 3, 3, &[1, 2, 2, 2]);
    c.step(append(2, 1, 3, (4, 3), vec![entry(5, 3)], 0));
    // A rejection claims nothing durable: it goes at once. Term 2 starts
    // at index 2 here.
    assert_ready(
        &c.ready(),
        &[
            "state: Follower term=3 leader=2",
            "messages:",
            "  1->2 MsgAppResp term=3 rejected=4 hint=2@2 round=0",
        ],
    );
    assert_eq!(c.log().last_index(), 4, "nothing appended or truncated");

    // A log too short asks from its end.
    c.step(append(2, 1, 3, (7, 3), vec![], 0));
    assert_ready(
        &c.ready(),
        &[
            "messages:",
            "  1->2 MsgAppResp term=3 rejected=7 hint=5@0 round=0",
        ],
    );
}

/// §5.3: "If an existing entry conflicts with a new one (same index but
/// different terms), delete the existing entry and all that follow it."
#[test]
fn a_follower_truncates_a_conflicting_suffix_and_appends_the_leaders_entries() {
    let mut c = core_with_log(1, 3, 3, &[1, 1, 2, 2]);
    c.step(append(2, 1, 3, (2, 1), vec![entry(3, 3)], 0));
    assert_ready(
        &c.ready(),
        &[
            "state: Follower term=3 leader=2",
            "entries:",
            "  3@3 \"e3\"",
            "after fsync:",
            "  1->2 MsgAppResp term=3 match=3 round=0",
        ],
    );
    assert_eq!(c.log().last_index(), 3);
    assert_eq!(c.log().term(3), Some(3));
}

/// Figure 2, AppendEntries rule 5: "If leaderCommit > commitIndex, set
/// commitIndex = min(leaderCommit, index of last new entry)."
#[test]
fn a_follower_commits_up_to_the_leaders_commit_but_not_past_the_last_new_entry() {
    let mut c = core_with_log(1, 3, 1, &[1, 1, 1, 1]);
    c.step(append(2, 1, 1, (1, 1), vec![entry(2, 1)], 4));
    assert_eq!(
        c.log().committed(),
        2,
        "entries 3 and 4 were not checked against the leader"
    );
    c.step(append(2, 1, 1, (4, 1), vec![], 3));
    assert_eq!(c.log().committed(), 3);
    // The commit index never moves back.
    c.step(append(2, 1, 1, (4, 1), vec![], 1));
    assert_eq!(c.log().committed(), 3);
}

/// §5.4.2 and Figure 8: "Raft never commits log entries from previous terms
/// by counting replicas. Only log entries from the leader's current term are
/// committed by counting replicas; once an entry from the current term has
/// been committed in this way, then all prior entries are committed
/// indirectly."
#[test]
fn a_leader_commits_entries_of_earlier_terms_only_through_one_of_its_own() {
    // Node 1 holds entries of term 1 and 2 and wins term 3.
    let mut c = core_with_log(1, 3, 2, &[1, 2]);
    tick_until(&mut c, Role::Candidate);
    let _ = ready_and_persist(&mut c);
    c.step(vote(2, 1, 3, true));
    assert_eq!(c.role(), Role::Leader);
    let _ = ready_and_persist(&mut c); // the no-op at index 3, durable here
                                       // A follower matches up to 2: entries of earlier terms on a majority...
    c.step(ack(2, 3, 2));
    assert_eq!(c.log().committed(), 0, "...are not committed by counting");
    // ...until the leader's own no-op is.
    c.step(ack(2, 3, 3));
    assert_eq!(c.log().committed(), 3);
}

/// DESIGN rule 2: "A leader may send entries to followers before its own
/// fsync finishes, but counts itself toward a commit only after."
#[test]
fn a_leader_counts_itself_toward_a_commit_only_once_its_write_is_durable() {
    let mut c = leader(3);
    let p = c.propose(Bytes::from_static(b"x")).unwrap();
    // Sent before the local fsync.
    assert_ready(
        &c.ready(),
        &[
            "entries:",
            "  2@1 \"x\"",
            "messages:",
            "  1->2 MsgApp term=1 log=1@1 commit=1 entries=[2@1 \"x\"] round=0",
            "  1->3 MsgApp term=1 log=1@1 commit=1 entries=[2@1 \"x\"] round=0",
        ],
    );
    c.step(ack(2, 1, p.index));
    assert_eq!(
        c.log().committed(),
        p.index - 1,
        "one follower is no majority without the leader"
    );
    c.on_persisted(p.index, p.term);
    assert_eq!(c.log().committed(), p.index);
    assert_ready(
        &c.ready(),
        &[
            "hard state: term=1 vote=1 commit=2",
            "committed:",
            "  2@1 \"x\"",
        ],
    );
}

/// DESIGN, the Ready contract: acknowledgements wait for durability.
#[test]
fn a_followers_acknowledgement_waits_for_its_write_to_be_durable() {
    let mut c = core(2, 3);
    c.step(append(1, 2, 1, (0, 0), vec![entry(1, 1)], 0));
    assert_ready(
        &c.ready(),
        &[
            "state: Follower term=1 leader=1",
            "hard state: term=1 vote=0 commit=0",
            "entries:",
            "  1@1 \"e1\"",
            "after fsync:",
            "  2->1 MsgAppResp term=1 match=1 round=0",
        ],
    );
}

/// §5.1: "The leader handles all client requests (if a client contacts a
/// follower, the follower redirects it to the leader)."
#[test]
fn a_proposal_on_a_follower_is_refused_naming_the_leader() {
    let mut c = core(2, 3);
    assert_eq!(
        c.propose(Bytes::from_static(b"x")),
        Err(ProposeError::NotLeader { leader: None })
    );
    c.step(append(1, 2, 1, (0, 0), vec![], 0));
    assert_eq!(
        c.propose(Bytes::from_static(b"x")),
        Err(ProposeError::NotLeader { leader: Some(1) })
    );
    assert_eq!(
        c.read_index(7),
        Err(ProposeError::NotLeader { leader: Some(1) })
    );
}

/// Flow control: a leader refuses proposals while too many entries wait
/// to commit, and takes them again once some commit.
#[test]
fn proposals_beyond_the_uncommitted_bound_wait_for_a_commit() {
    let mut cfg = config(1, 3);
    cfg.max_uncommitted_entries = 2;
    let mut c = elected_with(cfg);
    assert_eq!(c.log().committed(), 1);
    c.propose(Bytes::from_static(b"a")).unwrap();
    c.propose(Bytes::from_static(b"b")).unwrap();
    assert_eq!(
        c.propose(Bytes::from_static(b"c")),
        Err(ProposeError::Overloaded)
    );
    let _ = ready_and_persist(&mut c);
    c.step(ack(2, 1, 2));
    assert_eq!(c.log().committed(), 2);
    assert!(c.propose(Bytes::from_static(b"c")).is_ok());
}

/// Peer input is checked, never asserted: a malformed message changes
/// nothing and is counted by kind.
#[test]
fn a_malformed_append_is_refused_and_counted() {
    let mut c = core_with_log(1, 3, 2, &[1, 2]);
    c.step(append(2, 1, 2, (2, 2), vec![entry(4, 2)], 0));
    assert_eq!(c.log().last_index(), 2, "nothing appended");
    let counted: Vec<_> = c.refusals().iter().map(|(k, n)| (k.as_str(), *n)).collect();
    assert_eq!(
        counted,
        vec![("entries not contiguous after prev_log_index", 1)]
    );
}

/// Batching: many proposals between two Readies travel in one append.
#[test]
fn many_proposals_are_sent_in_one_append_per_follower() {
    let mut c = leader(3);
    for i in 0..100 {
        c.propose(Bytes::from(format!("p{i}"))).unwrap();
    }
    let rd = c.ready();
    assert_eq!(rd.entries.len(), 100, "one write for all");
    assert_eq!(rd.messages.len(), 2, "one append per follower");
    for m in &rd.messages {
        let Some(Body::AppendEntries(ae)) = &m.body else {
            panic!()
        };
        assert_eq!(ae.entries.len(), 100);
    }
}

/// Pipelining: at most `max_inflight_appends` appends are outstanding per follower.
#[test]
fn the_in_flight_window_bounds_pipelined_appends() {
    let mut cfg = config(1, 2);
    cfg.max_inflight_appends = 3;
    let mut c = elected_with(cfg); // its probe answered: replicate mode
    let mut sent = 0;
    for i in 0..10 {
        c.propose(Bytes::from(format!("p{i}"))).unwrap();
        sent += ready_and_persist(&mut c).messages.len();
    }
    assert_eq!(sent, 3, "the window is full after three appends");
    c.step(ack(2, 1, 3));
    let rd = ready_and_persist(&mut c);
    assert_eq!(rd.messages.len(), 1, "an acknowledgement frees the window");
}

/// Thesis §6.4: a read is served at the commit index once the leader has
/// heard from a majority after the read arrived.
#[test]
fn a_read_is_confirmed_only_after_a_quorum_answers_a_later_round() {
    let mut c = leader(3);
    c.read_index(42).unwrap();
    let rd = c.ready();
    assert!(rd.read_states.is_empty());
    let round = rd
        .messages
        .iter()
        .find_map(|m| match &m.body {
            Some(Body::AppendEntries(ae)) => Some(ae.round),
            _ => None,
        })
        .unwrap();
    let old = AppendEntriesResponse {
        success: true,
        match_index: 1,
        round: round - 1,
        ..Default::default()
    };
    c.step(msg(2, 1, 1, Body::AppendEntriesResponse(old)));
    assert!(
        c.ready().read_states.is_empty(),
        "an answer to an earlier round proves nothing"
    );
    let fresh = AppendEntriesResponse {
        success: true,
        match_index: 1,
        round,
        ..Default::default()
    };
    c.step(msg(2, 1, 1, Body::AppendEntriesResponse(fresh)));
    let rd = c.ready();
    assert_eq!(rd.read_states.len(), 1);
    assert_eq!((rd.read_states[0].id, rd.read_states[0].index), (42, 1));
}

/// §7: a follower receives the snapshot in chunks at increasing offsets and
/// installs it when the last arrives; a chunk out of place is refused and
/// leaves its state as it was.
#[test]
fn snapshot_chunks_are_reassembled_and_installed_and_a_gap_changes_nothing() {
    let mut c = core_with_log(2, 3, 1, &[1, 1]);
    let meta = SnapshotMeta { index: 10, term: 2 };
    let chunk = |offset: u64, data: &'static [u8], done: bool| {
        let is = InstallSnapshot {
            meta: Some(meta),
            offset,
            data: Bytes::from_static(data),
            done,
            round: 0,
        };
        msg(1, 2, 2, Body::InstallSnapshot(is))
    };
    c.step(chunk(0, b"abc", false));
    let rd = c.ready();
    let taken = |offset, data: &'static [u8], done| SnapshotChunkIn {
        meta,
        offset,
        data: Bytes::from_static(data),
        done,
    };
    assert_eq!(rd.snapshot_chunks_in, vec![taken(0, b"abc", false)]);
    assert!(
        rd.messages.is_empty(),
        "the answer waits until the chunk is written"
    );
    c.on_snapshot_chunk_written(meta, 3);
    let rd = c.ready();
    assert!(
        matches!(&rd.messages[0].body, Some(Body::InstallSnapshotResponse(r)) if r.next_offset == 3 && !r.done),
        "{:?}",
        rd.messages
    );
    c.step(chunk(9, b"zzz", true)); // a gap: refused
    let rd = c.ready();
    assert!(
        rd.snapshot_chunks_in.is_empty(),
        "a chunk out of place is not taken"
    );
    assert_eq!(c.log().last_index(), 2, "the old log is intact");
    c.step(chunk(3, b"def", true));
    let rd = c.ready();
    assert_eq!(rd.snapshot_chunks_in, vec![taken(3, b"def", true)]);
    assert!(
        rd.snapshot.is_none() && c.log().last_index() == 2,
        "nothing is installed until the runtime says the snapshot is durable"
    );
    assert!(c.on_snapshot_received(SnapshotInfo { meta, size: 6 }));
    let rd = c.ready();
    assert_eq!(rd.snapshot, Some(meta));
    assert_eq!(
        (
            c.log().snapshot_index(),
            c.log().committed(),
            c.log().last_index()
        ),
        (10, 10, 10)
    );
    assert!(rd
        .persisted_messages
        .iter()
        .any(|m| matches!(&m.body, Some(Body::InstallSnapshotResponse(r)) if r.done)));
}

/// §7: a snapshot complete and being installed when a new leader sends it
/// again is answered, once installed, to the leader that sent it last.
#[test]
fn an_installed_snapshot_is_acknowledged_to_the_leader_that_sent_it_last() {
    let mut c = core_with_log(2, 3, 1, &[1, 1]);
    let meta = SnapshotMeta { index: 10, term: 2 };
    let whole = |from: u64, term: u64, round: u64| {
        let is = InstallSnapshot {
            meta: Some(meta),
            offset: 0,
            data: Bytes::from_static(b"abc"),
            done: true,
            round,
        };
        msg(from, 2, term, Body::InstallSnapshot(is))
    };
    c.step(whole(1, 2, 4));
    let _ = c.ready();
    c.step(whole(3, 3, 7));
    let _ = c.ready();
    assert!(c.on_snapshot_received(SnapshotInfo { meta, size: 3 }));
    let done: Vec<_> = c
        .ready()
        .persisted_messages
        .iter()
        .filter_map(|m| match &m.body {
            Some(Body::InstallSnapshotResponse(r)) if r.done => Some((m.to, m.term, r.round)),
            _ => None,
        })
        .collect();
    assert_eq!(done, vec![(3, 3, 7)]);
}

/// §7, Figure 13 step 6: "if existing log entry has same index and term as
/// snapshot's last included entry, retain log entries following it". A
/// follower that accepted entries past a snapshot from a newer leader while
/// that snapshot was being made durable keeps them (it has acknowledged
/// them, and the newer leader may count them as committed); it takes the
/// snapshot's index as committed instead of installing it.
#[test]
fn a_snapshot_whose_last_entry_the_log_holds_keeps_the_entries_after_it() {
    let mut c = core_with_log(2, 3, 1, &[1, 1]);
    let meta = SnapshotMeta { index: 4, term: 2 };
    let whole = InstallSnapshot {
        meta: Some(meta),
        offset: 0,
        data: Bytes::from_static(b"abc"),
        done: true,
        round: 0,
    };
    c.step(msg(1, 2, 2, Body::InstallSnapshot(whole)));
    let _ = c.ready();
    // While the snapshot is written, node 3 leads term 3 and sends the
    // entries after node 2's log, past the snapshot, committed below it.
    let entries = vec![entry(3, 2), entry(4, 2), entry(5, 3), entry(6, 3)];
    c.step(append(3, 2, 3, (2, 1), entries, 2));
    let rd = c.ready();
    assert_eq!(rd.entries.len(), 4, "the entries are written");
    c.on_persisted(6, 3);
    assert!(
        !c.on_snapshot_received(SnapshotInfo { meta, size: 3 }),
        "the log already holds the snapshot's last entry: nothing to install"
    );
    let rd = c.ready();
    assert_eq!(rd.snapshot, None);
    assert!(
        rd.messages
            .iter()
            .chain(&rd.persisted_messages)
            .any(|m| m.to == 1
                && matches!(&m.body, Some(Body::InstallSnapshotResponse(r)) if r.done)),
        "the sender hears that the transfer is over"
    );
    assert_eq!(
        (c.log().last_index(), c.log().committed()),
        (6, 4),
        "the entries after the snapshot stay, and its index is committed"
    );
    assert_eq!(c.log().term(6), Some(3));
}

/// Thesis §6.2: "a leader steps down if an election timeout elapses without
/// a successful round of heartbeats to a majority of its cluster".
#[test]
fn a_leader_that_hears_from_no_majority_steps_down() {
    let mut cfg = config(1, 3);
    cfg.check_quorum = true;
    let mut c = RaftCore::new(cfg, Restored::default()).unwrap();
    tick_until(&mut c, Role::Candidate);
    let _ = ready_and_persist(&mut c);
    c.step(vote(2, 1, 1, true));
    assert_eq!(c.role(), Role::Leader);
    let ticks = tick_until(&mut c, Role::Follower);
    assert!(
        ticks <= 20,
        "within an election timeout or two ({ticks} ticks)"
    );
    assert_eq!(c.term(), 1, "stepping down does not start a new term");
}

/// Proposes `n` entries on leader `c` of term 1, has node 3 acknowledge
/// them, and returns the last index (committed and applied).
fn commit_with_node_3(c: &mut RaftCore, n: u64) -> u64 {
    for i in 0..n {
        c.propose(Bytes::from(format!("x{i}"))).unwrap();
    }
    let _ = ready_and_persist(c);
    let last = c.log().last_index();
    c.step(ack(3, 1, last));
    let _ = ready_and_persist(c);
    assert_eq!(c.log().applied(), last);
    last
}

/// The leader saved a snapshot at `index` (term 1): compacts and returns its meta.
fn compact_at(c: &mut RaftCore, index: u64) -> SnapshotMeta {
    let meta = SnapshotMeta { index, term: 1 };
    c.compact(SnapshotInfo { meta, size: 100 });
    meta
}

/// Node 2 says it has installed the 100-byte snapshot at `meta`.
fn installed_by_node_2(meta: SnapshotMeta) -> Message {
    let done = InstallSnapshotResponse {
        meta: Some(meta),
        next_offset: 100,
        done: true,
        ..Default::default()
    };
    msg(2, 1, 1, Body::InstallSnapshotResponse(done))
}

/// With its followers silent, the leader commits 10 entries with node 3,
/// snapshots at the last, and starts sending that snapshot to node 2, which
/// has nothing but the no-op. Returns the index and the snapshot.
fn snapshot_sent_to_node_2(c: &mut RaftCore) -> (u64, SnapshotMeta) {
    followers_fall_silent(c);
    let first = commit_with_node_3(c, 10);
    let older = compact_at(c, first);
    node_2_is_sent(c, older);
    (first, older)
}

/// Node 2, which has nothing but the no-op, rejects an append after
/// `snapshot`: the leader starts sending it `snapshot`.
fn node_2_is_sent(c: &mut RaftCore, snapshot: SnapshotMeta) {
    let reject = AppendEntriesResponse {
        success: false,
        conflict_index: 2,
        rejected_index: snapshot.index,
        ..Default::default()
    };
    c.step(msg(2, 1, 1, Body::AppendEntriesResponse(reject)));
    let rd = ready_and_persist(c);
    assert!(
        rd.snapshot_chunks_out
            .iter()
            .any(|ch| ch.to == 2 && ch.meta == snapshot),
        "{:?}",
        rd.snapshot_chunks_out
    );
}

/// Ticks the leader through 20 election timeouts without a word from its
/// followers: none counts as live, so compaction keeps nothing for them.
fn followers_fall_silent(c: &mut RaftCore) {
    for _ in 0..=20 * config(1, 3).election_ticks {
        c.tick();
        let _ = ready_and_persist(c);
    }
}

/// §7, with a slow transfer: a leader that snapshots again while a follower
/// still receives its previous snapshot keeps the entries after that one,
/// so the follower catches up with appends once it has installed it,
/// instead of starting over with the newer snapshot (and, on a slow disk,
/// never catching up). With every follower caught up, compaction keeps nothing.
#[test]
fn a_follower_receiving_the_previous_snapshot_catches_up_by_appends() {
    let mut c = leader(3);
    let (first, older) = snapshot_sent_to_node_2(&mut c);

    let second = commit_with_node_3(&mut c, 10);
    compact_at(&mut c, second);
    assert_eq!(
        c.log().first_index(),
        first + 1,
        "kept after the older snapshot"
    );

    c.step(installed_by_node_2(older));
    let rd = ready_and_persist(&mut c);
    assert!(rd.snapshot_chunks_out.is_empty(), "no second transfer");
    let caught_up = rd.messages.iter().any(|m| {
        matches!(&m.body, Some(Body::AppendEntries(ae))
            if m.to == 2 && ae.prev_log_index == first && ae.entries.first().map(|e| e.index) == Some(first + 1))
    });
    assert!(caught_up, "{:?}", rd.messages);

    // Everyone caught up: the next snapshot compacts everything before it.
    let third = commit_with_node_3(&mut c, 5);
    c.step(ack(2, 1, third));
    compact_at(&mut c, third);
    assert_eq!(c.log().first_index(), third + 1);
}

/// §7, for a follower catching up by appends: one that answers but lags
/// behind the leader's snapshot keeps the log after its match, so it goes
/// on by appends instead of starting over with the snapshot; once silent
/// for an election timeout, it holds nothing back.
#[test]
fn a_live_follower_behind_a_snapshot_keeps_the_log_after_its_match() {
    let mut c = leader(3);
    let first = commit_with_node_3(&mut c, 10);
    c.step(ack(2, 1, 5));
    let _ = ready_and_persist(&mut c);
    compact_at(&mut c, first);
    assert_eq!(c.log().first_index(), 6, "kept after node 2's match");

    followers_fall_silent(&mut c);
    let second = commit_with_node_3(&mut c, 10);
    compact_at(&mut c, second);
    assert_eq!(
        c.log().first_index(),
        second + 1,
        "node 2, silent, holds nothing back"
    );
}

/// §7, for a follower being repaired after losing its disk: it counts
/// toward no quorum, but while it answers it catches up, so the log after
/// its match is kept for it like for any other.
#[test]
fn a_follower_being_repaired_keeps_the_log_after_its_match() {
    let mut c = leader(3);
    followers_fall_silent(&mut c);
    let first = commit_with_node_3(&mut c, 10);
    for match_index in [0, 5] {
        let r = AppendEntriesResponse {
            success: match_index > 0,
            match_index,
            recovering: true,
            ..Default::default()
        };
        c.step(msg(2, 1, 1, Body::AppendEntriesResponse(r)));
        let _ = ready_and_persist(&mut c);
    }
    compact_at(&mut c, first);
    assert_eq!(c.log().first_index(), 6, "kept after node 2's match");
}

/// §7, with a transfer slower than several snapshots: the leader keeps the
/// log after the snapshot being sent through any number of newer ones
/// while it weighs at most `max_log_kept_for_transfer_bytes`, so steady
/// writes cannot make a slow transfer start over for ever; past that it
/// keeps one snapshot interval, and the follower is sent the newest.
#[test]
fn the_log_kept_for_a_slow_transfer_is_bounded_in_bytes() {
    let mut cfg = config(1, 3);
    // Each round below is 10 entries of 2 bytes, 660 bytes with the cost
    // per entry (64): two rounds fit, three not.
    cfg.max_log_kept_for_transfer_bytes = 1_500;
    let mut c = elected_with(cfg);
    let (first, older) = snapshot_sent_to_node_2(&mut c);

    for kept in [660, 1_320] {
        let index = commit_with_node_3(&mut c, 10);
        compact_at(&mut c, index);
        assert_eq!(
            c.log().first_index(),
            first + 1,
            "{kept} bytes kept for node 2"
        );
    }
    let third = c.log().last_index();
    let fourth = commit_with_node_3(&mut c, 10);
    compact_at(&mut c, fourth);
    assert_eq!(
        c.log().first_index(),
        third + 1,
        "1,980 bytes: one interval kept"
    );
    let fifth = commit_with_node_3(&mut c, 10);
    let newest = compact_at(&mut c, fifth);
    assert_eq!(
        c.log().first_index(),
        fourth + 1,
        "nothing kept for a transfer the log no longer serves"
    );

    c.step(installed_by_node_2(older));
    let rd = ready_and_persist(&mut c);
    assert!(
        rd.snapshot_chunks_out
            .iter()
            .any(|ch| ch.to == 2 && ch.meta == newest),
        "the entries after the older snapshot are gone: {:?}",
        rd.snapshot_chunks_out
    );
}

/// Commits 10 entries with the acknowledgements of `voters` and returns
/// the last index.
fn commit_with(c: &mut RaftCore, voters: &[u64]) -> u64 {
    for i in 0..10 {
        c.propose(Bytes::from(format!("x{i}"))).unwrap();
    }
    let _ = ready_and_persist(c);
    let last = c.log().last_index();
    for &v in voters {
        c.step(ack(v, 1, last));
    }
    let _ = ready_and_persist(c);
    assert_eq!(c.log().applied(), last);
    last
}

/// §7, two needs at once: a transfer whose log has grown past
/// `max_log_kept_for_transfer_bytes` gives way, but a younger need within
/// the budget (a live follower whose match lags behind the snapshot) is
/// still met: the log starts after it, not after the last snapshot.
#[test]
fn a_need_within_the_byte_budget_is_met_when_an_older_transfer_is_past_it() {
    let mut cfg = config(1, 5);
    // Rounds of 10 entries of 2 bytes: 660 bytes each with the cost per
    // entry (64); two rounds fit, three not.
    cfg.max_log_kept_for_transfer_bytes = 1_500;
    let mut c = RaftCore::new(cfg, Restored::default()).unwrap();
    tick_until(&mut c, Role::Candidate);
    let _ = ready_and_persist(&mut c);
    c.step(vote(2, 1, 1, true));
    c.step(vote(3, 1, 1, true));
    assert_eq!(c.role(), Role::Leader);
    let _ = ready_and_persist(&mut c);
    for p in 2..=4 {
        c.step(ack(p, 1, 1));
    }
    let _ = ready_and_persist(&mut c);
    // Nodes 3 and 4 make the majority; 2 and 5 fall silent.
    followers_fall_silent(&mut c);
    let first = commit_with(&mut c, &[3, 4]);
    let older = compact_at(&mut c, first);
    node_2_is_sent(&mut c, older);

    let second = commit_with(&mut c, &[3, 4]);
    compact_at(&mut c, second);
    let third = commit_with(&mut c, &[3, 4]);
    compact_at(&mut c, third);
    assert_eq!(
        c.log().first_index(),
        first + 1,
        "two rounds kept for node 2"
    );

    // Node 5 comes back, its match at `second`; the log after `first` now
    // weighs three rounds, after `second` two.
    let fourth = commit_with(&mut c, &[3, 4]);
    c.step(ack(5, 1, second));
    let _ = ready_and_persist(&mut c);
    compact_at(&mut c, fourth);
    assert_eq!(
        c.log().first_index(),
        second + 1,
        "node 5's need is met though node 2's is past the budget"
    );
}

/// Flow control in bytes: proposals are refused while too many payload
/// bytes wait to be committed, and taken again once they are; one entry
/// larger than the whole budget still gets in when nothing waits.
#[test]
fn proposals_are_refused_while_too_many_bytes_wait_to_be_committed() {
    let mut cfg = config(1, 3);
    cfg.max_uncommitted_bytes = 100;
    let mut c = elected_with(cfg);
    let big = Bytes::from(vec![b'x'; 300]);
    assert!(c.propose(big).is_ok(), "alone, a large entry gets in");
    assert_eq!(
        c.propose(Bytes::from_static(b"y")),
        Err(ProposeError::Overloaded)
    );
    let _ = ready_and_persist(&mut c);
    c.step(ack(2, 1, 2));
    let _ = ready_and_persist(&mut c);
    assert_eq!(c.log().committed(), 2);
    let sixty = Bytes::from(vec![b'z'; 60]);
    assert!(c.propose(sixty.clone()).is_ok());
    assert_eq!(c.propose(sixty), Err(ProposeError::Overloaded));
}
