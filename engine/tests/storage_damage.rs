//! The rules a node follows after its storage came up empty or damaged
//! (`engine/src/raft/standing.rs`), each test named after its rule and
//! checking the exact outputs of `ready()`.
// A test panics on any failure: that is how it reports.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use kv_engine::raft::{Config, Found, RaftCore, Ready, Restored, Role, Standing};
use kv_proto::raft::{
    message::Body, AppendEntries, AppendEntriesResponse, Entry, HardState, Message, RepairRequest,
    RequestVote, RequestVoteResponse, StatusQuery, StatusReply, TimeoutNow,
};

const NONCE: u64 = 7;

fn config(id: u64, n: u64) -> Config {
    let mut cfg = Config::new(id, (1..=n).collect());
    cfg.pre_vote = false;
    cfg.check_quorum = false;
    cfg
}

fn start(cfg: Config, found: Found, hard_state: HardState, entries: Vec<Entry>) -> RaftCore {
    let restored = Restored {
        hard_state,
        entries,
        found,
        nonce: NONCE,
        ..Default::default()
    };
    RaftCore::new(cfg, restored).unwrap()
}

/// A recovering node, as storage leaves it after damage: term `term`,
/// floor `floor` (0: not learned yet).
fn recovering(id: u64, n: u64, term: u64, floor: u64) -> RaftCore {
    let hs = HardState {
        term,
        recovering: true,
        repair_floor: floor,
        ..Default::default()
    };
    start(config(id, n), Found::Intact, hs, Vec::new())
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

fn reply(from: u64, to: u64, term: u64, nonce: u64, fresh: bool) -> Message {
    let r = StatusReply {
        nonce,
        fresh,
        recovering: false,
    };
    msg(from, to, term, Body::StatusReply(r))
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

fn request_vote(from: u64, to: u64, term: u64, transfer: bool) -> Message {
    let rv = RequestVote {
        pre_vote: false,
        last_log_index: 10,
        last_log_term: term,
        transfer,
    };
    msg(from, to, term, Body::RequestVote(rv))
}

fn bodies(msgs: &[Message]) -> Vec<(u64, Body)> {
    msgs.iter()
        .map(|m| (m.to, m.body.clone().unwrap()))
        .collect()
}

/// Reports everything in `rd` durable, as a driver would after its fsync.
fn persist(core: &mut RaftCore, rd: &Ready) {
    if let Some((index, term)) = rd.persist_point() {
        core.on_persisted(index, term);
    }
}

/// A leader of a 3-node cluster in term 1 with its no-op durable.
fn leader_of_three() -> RaftCore {
    let mut c = start(
        config(1, 3),
        Found::Intact,
        HardState::default(),
        Vec::new(),
    );
    while c.role() != Role::Candidate {
        c.tick();
    }
    let rd = c.ready();
    persist(&mut c, &rd);
    let granted = RequestVoteResponse {
        pre_vote: false,
        granted: true,
    };
    c.step(msg(2, 1, 1, Body::RequestVoteResponse(granted)));
    assert_eq!(c.role(), Role::Leader);
    let rd = c.ready();
    persist(&mut c, &rd);
    c
}

fn ack(from: u64, term: u64, match_index: u64, recovering: bool) -> Message {
    let r = AppendEntriesResponse {
        success: true,
        match_index,
        recovering,
        ..Default::default()
    };
    msg(from, 1, term, Body::AppendEntriesResponse(r))
}

#[test]
fn a_member_with_empty_storage_votes_only_once_every_member_is_found_fresh() {
    let mut c = start(config(1, 3), Found::Empty, HardState::default(), Vec::new());
    assert_eq!(c.standing(), Standing::Discovering);
    let rd = c.ready();
    let query = Body::StatusQuery(StatusQuery { nonce: NONCE });
    assert_eq!(bodies(&rd.messages), vec![(2, query.clone()), (3, query)]);
    assert!(rd.hard_state.is_none(), "a discovering node writes nothing");

    c.step(reply(2, 1, 0, NONCE, true));
    assert_eq!(
        c.standing(),
        Standing::Discovering,
        "member 3 has not answered"
    );
    c.step(reply(3, 1, 0, NONCE, true));
    assert_eq!(c.standing(), Standing::Voter);
    let rd = c.ready();
    assert_eq!(rd.soft_state.map(|s| s.standing), Some(Standing::Voter));
    assert_eq!(
        rd.hard_state,
        Some(HardState::default()),
        "it records its decision at once, so storage is never again taken for a wiped one"
    );
}

#[test]
fn a_member_with_empty_storage_in_an_existing_cluster_recovers_with_a_floor_above_every_term() {
    let mut c = start(config(1, 3), Found::Empty, HardState::default(), Vec::new());
    let _ = c.ready();
    c.step(reply(2, 1, 5, NONCE, false));
    c.step(reply(3, 1, 4, NONCE, true));
    assert_eq!(c.standing(), Standing::Recovering);
    assert_eq!(c.repair_floor(), 6);
    let rd = c.ready();
    assert_eq!(
        rd.hard_state,
        Some(HardState {
            term: 0,
            vote: 0,
            commit: 0,
            recovering: true,
            repair_floor: 6,
        }),
        "the recovering mark is durable before anything else"
    );
}

/// Damage is never forgotten: a damaged member stays recovering even when
/// every other member says its storage is empty (a majority lost its data:
/// nobody may make up a new cluster over what this one acknowledged).
#[test]
fn a_damaged_member_stays_recovering_when_every_other_member_is_empty() {
    let hs = HardState {
        term: 3,
        ..Default::default()
    };
    let mut c = start(config(1, 3), Found::Damaged, hs, vec![entry(1, 3)]);
    assert_eq!(c.standing(), Standing::Recovering);
    let _ = c.ready();
    c.step(reply(2, 1, 0, NONCE, true));
    c.step(reply(3, 1, 0, NONCE, true));
    assert_eq!(c.standing(), Standing::Recovering);
    assert_eq!(c.repair_floor(), 4, "above every term it knows of");
}

#[test]
fn a_status_reply_meant_for_an_earlier_start_is_ignored() {
    let mut c = start(config(1, 3), Found::Empty, HardState::default(), Vec::new());
    c.step(reply(2, 1, 9, NONCE + 1, false));
    c.step(reply(3, 1, 9, NONCE + 1, false));
    assert_eq!(c.standing(), Standing::Discovering);
}

#[test]
fn a_discovering_member_neither_votes_nor_adopts_a_term() {
    let mut c = start(config(1, 3), Found::Empty, HardState::default(), Vec::new());
    let _ = c.ready();
    c.step(request_vote(2, 1, 3, false));
    assert_eq!(c.term(), 0);
    let rd = c.ready();
    assert!(rd.messages.is_empty() && rd.persisted_messages.is_empty());
    assert!(rd.hard_state.is_none());
}

#[test]
fn a_discovering_member_that_hears_a_leader_is_recovering_before_it_stores_anything() {
    let mut c = start(config(1, 3), Found::Empty, HardState::default(), Vec::new());
    let _ = c.ready();
    c.step(append(2, 1, 4, (0, 0), vec![entry(1, 4)], 1));
    assert_eq!(c.standing(), Standing::Recovering);
    let rd = c.ready();
    let hs = rd.hard_state.unwrap();
    assert!(hs.recovering, "{hs:?}");
    assert_eq!(
        rd.entries,
        vec![entry(1, 4)],
        "written together with the mark"
    );
}

#[test]
fn a_recovering_member_grants_no_vote_and_never_campaigns() {
    let mut c = recovering(1, 3, 2, 5);
    c.step(request_vote(2, 1, 3, false));
    let rd = c.ready();
    assert_eq!(
        bodies(&rd.persisted_messages),
        vec![(
            2,
            Body::RequestVoteResponse(RequestVoteResponse {
                pre_vote: false,
                granted: false
            })
        )]
    );
    for _ in 0..200 {
        c.tick();
        assert_eq!(
            c.role(),
            Role::Follower,
            "a recovering node never campaigns"
        );
    }
}

#[test]
fn a_leader_counts_a_recovering_follower_toward_no_commit() {
    let mut c = leader_of_three();
    c.propose(Bytes::from_static(b"x")).unwrap();
    let rd = c.ready();
    persist(&mut c, &rd);
    assert_eq!(c.log().committed(), 0);
    c.step(ack(2, 1, 2, true));
    assert_eq!(
        c.log().committed(),
        0,
        "a recovering follower's ack does not count"
    );
    c.step(ack(3, 1, 2, false));
    assert_eq!(c.log().committed(), 2);
}

#[test]
fn a_recovering_follower_that_lacks_what_it_acknowledged_is_probed_from_scratch() {
    let mut c = leader_of_three();
    c.propose(Bytes::from_static(b"x")).unwrap();
    let rd = c.ready();
    persist(&mut c, &rd);
    c.step(ack(2, 1, 2, true));
    c.step(ack(3, 1, 2, false));
    let _ = c.ready();
    // Follower 2 loses its state again: it rejects the heartbeat at its
    // match (2), above index 1, so that "at or below its match" is what
    // tells this from an ordinary stale rejection.
    let reject = AppendEntriesResponse {
        success: false,
        conflict_index: 1,
        rejected_index: 2,
        recovering: true,
        ..Default::default()
    };
    c.step(msg(2, 1, 1, Body::AppendEntriesResponse(reject)));
    for _ in 0..c.config().heartbeat_ticks {
        c.tick();
    }
    let rd = c.ready();
    let to_two: Vec<u64> = rd
        .messages
        .iter()
        .filter(|m| m.to == 2)
        .filter_map(|m| match &m.body {
            Some(Body::AppendEntries(ae)) => Some(ae.prev_log_index),
            _ => None,
        })
        .collect();
    assert_eq!(
        to_two.first(),
        Some(&0),
        "its heartbeat no longer assumes index 1: {to_two:?}"
    );
}

/// A member recovering with repair floor 5, caught up (entries 1 and 2
/// of term 4, committed) by node 2 leading `term`, an election timeout
/// later: still recovering, and what it sent meanwhile.
fn caught_up_by_leader_of(term: u64) -> (RaftCore, Ready) {
    let mut c = recovering(1, 3, 4, 5);
    c.step(append(
        2,
        1,
        term,
        (0, 0),
        vec![entry(1, 4), entry(2, 4)],
        2,
    ));
    let rd = c.ready();
    persist(&mut c, &rd);
    assert_eq!(c.standing(), Standing::Recovering);
    for _ in 0..c.config().election_ticks {
        c.tick();
    }
    let rd = c.ready();
    (c, rd)
}

#[test]
fn a_recovering_member_asks_for_no_election_once_its_leader_is_at_its_floor() {
    // The leader of term 5 (the floor) has not yet committed an entry of
    // its own term: not repaired, and nothing to ask for; that leader's
    // first commit will repair it.
    let (_, rd) = caught_up_by_leader_of(5);
    assert_eq!(bodies(&rd.messages), vec![], "no RepairRequest");
}

#[test]
fn a_recovering_member_is_repaired_only_by_a_leader_of_a_term_at_or_above_its_floor() {
    // A leader of term 4 (below the floor) catches it up; holding that
    // leader's log, it asks for an election at its floor.
    let (mut c, rd) = caught_up_by_leader_of(4);
    assert_eq!(
        bodies(&rd.messages),
        vec![(2, Body::RepairRequest(RepairRequest { floor: 5 }))]
    );
    // The leader of term 5 commits an entry of its own term: repaired.
    c.step(append(2, 1, 5, (2, 4), vec![entry(3, 5)], 3));
    assert_eq!(c.standing(), Standing::Recovering, "not durable yet");
    let rd = c.ready();
    persist(&mut c, &rd);
    assert_eq!(c.standing(), Standing::Voter);
    let rd = c.ready();
    assert_eq!(
        rd.hard_state,
        Some(HardState {
            term: 5,
            vote: 2,
            commit: 3,
            recovering: false,
            repair_floor: 0,
        }),
        "it records the repairing leader as its vote in that term"
    );
}

#[test]
fn a_leader_asked_for_repair_holds_a_transfer_election_at_the_floor() {
    let mut c = leader_of_three();
    c.step(ack(2, 1, 1, true));
    c.step(ack(3, 1, 1, false));
    let _ = c.ready();
    c.step(msg(
        2,
        1,
        1,
        Body::RepairRequest(RepairRequest { floor: 4 }),
    ));
    assert_eq!((c.role(), c.term()), (Role::Candidate, 4));
    let rd = c.ready();
    let rv = RequestVote {
        pre_vote: false,
        last_log_index: 1,
        last_log_term: 1,
        transfer: true,
    };
    assert_eq!(
        bodies(&rd.persisted_messages),
        vec![(2, Body::RequestVote(rv)), (3, Body::RequestVote(rv))]
    );
}

#[test]
fn a_leader_ignores_a_repair_request_from_a_follower_not_caught_up() {
    let mut c = leader_of_three();
    c.step(ack(3, 1, 1, false));
    c.step(ack(2, 1, 0, true));
    c.step(msg(
        2,
        1,
        1,
        Body::RepairRequest(RepairRequest { floor: 4 }),
    ));
    assert_eq!((c.role(), c.term()), (Role::Leader, 1));
}

#[test]
fn a_voter_within_its_leader_lease_heeds_only_a_transfer_election() {
    let mut cfg = config(1, 3);
    cfg.check_quorum = true;
    let mut c = start(cfg, Found::Intact, HardState::default(), Vec::new());
    c.step(append(2, 1, 1, (0, 0), vec![entry(1, 1)], 1));
    let _ = c.ready();
    c.step(request_vote(3, 1, 2, false));
    assert_eq!(
        c.term(),
        1,
        "a plain vote request within the lease is ignored"
    );
    c.step(request_vote(3, 1, 2, true));
    assert_eq!((c.term(), c.vote()), (2, 3));
}

#[test]
fn a_follower_told_timeout_now_by_its_leader_campaigns_at_once() {
    let mut cfg = config(1, 3);
    cfg.pre_vote = true;
    let mut c = start(cfg, Found::Intact, HardState::default(), Vec::new());
    c.step(append(2, 1, 1, (0, 0), vec![entry(1, 1)], 1));
    let _ = c.ready();
    c.step(msg(3, 1, 1, Body::TimeoutNow(TimeoutNow {})));
    assert_eq!(c.role(), Role::Follower, "only the leader may hand over");
    c.step(msg(2, 1, 1, Body::TimeoutNow(TimeoutNow {})));
    assert_eq!(
        (c.role(), c.term()),
        (Role::Candidate, 2),
        "no pre-vote round"
    );
}
