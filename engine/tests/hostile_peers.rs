//! Hostile and broken peers: sequences of structurally valid but
//! adversarial messages (wrong terms, index gaps, commits beyond the
//! entries sent, chunks out of order or oversize, answers about entries
//! never sent, senders that are not members) fed to cores in every role.
//! No sequence may make a core panic, move its commit index back past what
//! it had, or change an entry it has committed.
//!
//! A bounded run is part of the test command; run it for hours with
//! `PROPTEST_CASES=10000000 cargo test --release -p kv-engine --test hostile_peers`.
// A test panics on any failure: that is how it reports.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use kv_engine::raft::{Config, Found, RaftCore, Restored, Role, SnapshotInfo};
use kv_proto::raft::{
    message::Body, AppendEntries, AppendEntriesResponse, Entry, HardState, InstallSnapshot,
    InstallSnapshotResponse, Message, RepairRequest, RequestVote, RequestVoteResponse,
    SnapshotMeta, StatusQuery, StatusReply, TimeoutNow,
};
use proptest::prelude::*;

/// The node under attack is node 1 of members 1, 2, 3; node 9 is a stranger.
const SELF: u64 = 1;

fn config() -> Config {
    let mut cfg = Config::new(SELF, vec![1, 2, 3]);
    cfg.snapshot_chunk_bytes = 64;
    cfg
}

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: Bytes::from(format!("e{index}")),
    }
}

/// The roles and states a core can be in when the messages arrive.
#[derive(Debug, Clone, Copy)]
enum Start {
    /// A follower of term 3 with entries 1..=12, 8 of them committed.
    Follower,
    /// The leader of term 4 (the same log plus its no-op).
    Leader,
    /// A candidate of term 4.
    Candidate,
    /// A follower whose log starts after a snapshot at 10.
    AfterSnapshot,
    /// A recovering node (its storage was damaged).
    Recovering,
}

fn start(s: Start) -> RaftCore {
    let terms = [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3, 3];
    let mut restored = Restored {
        hard_state: HardState {
            term: 3,
            vote: 0,
            commit: 8,
            ..Default::default()
        },
        entries: terms
            .iter()
            .enumerate()
            .map(|(i, &t)| entry(i as u64 + 1, t))
            .collect(),
        nonce: 77,
        ..Default::default()
    };
    match s {
        Start::AfterSnapshot => {
            restored.snapshot = Some(SnapshotInfo {
                meta: SnapshotMeta { index: 10, term: 3 },
                size: 500,
            });
            restored.entries.retain(|e| e.index > 10);
            restored.hard_state.commit = 10;
        }
        Start::Recovering => {
            restored.found = Found::Damaged;
        }
        _ => {}
    }
    let mut c = RaftCore::new(config(), restored).unwrap();
    if matches!(s, Start::Leader | Start::Candidate) {
        while !matches!(c.role(), Role::PreCandidate | Role::Candidate) {
            c.tick();
            drain(&mut c);
        }
        if c.role() == Role::PreCandidate {
            let term = c.term() + 1;
            c.step(msg(2, term, vote_granted(true)));
            drain(&mut c);
        }
        assert_eq!(c.role(), Role::Candidate);
    }
    if matches!(s, Start::Leader) {
        let term = c.term();
        c.step(msg(2, term, vote_granted(false)));
        drain(&mut c);
        assert_eq!(c.role(), Role::Leader);
    }
    c
}

fn vote_granted(pre_vote: bool) -> Body {
    Body::RequestVoteResponse(RequestVoteResponse {
        pre_vote,
        granted: true,
    })
}

fn msg(from: u64, term: u64, body: Body) -> Message {
    Message {
        from,
        to: SELF,
        term,
        body: Some(body),
    }
}

/// Takes everything the core has for its driver, acting as a driver that
/// makes writes durable and takes snapshots at once.
fn drain(c: &mut RaftCore) {
    while c.has_ready() {
        let rd = c.ready();
        if let Some((index, term)) = rd.persist_point() {
            c.on_persisted(index, term);
        }
        for chunk in rd.snapshot_chunks_in {
            if chunk.done {
                let size = chunk.offset + chunk.data.len() as u64;
                let _ = c.on_snapshot_received(SnapshotInfo {
                    meta: chunk.meta,
                    size,
                });
            } else {
                c.on_snapshot_chunk_written(chunk.meta, chunk.offset + chunk.data.len() as u64);
            }
        }
    }
}

/// One thing that happens to the core.
#[derive(Debug, Clone)]
enum Event {
    Message(Message),
    Tick,
    Propose,
}

/// Numbers near the interesting boundaries, and a few extreme ones.
fn index() -> impl Strategy<Value = u64> {
    prop_oneof![8 => 0u64..=16, 1 => Just(u64::MAX), 1 => Just(u64::MAX - 1)]
}

fn term() -> impl Strategy<Value = u64> {
    prop_oneof![8 => 0u64..=6, 1 => Just(u64::MAX)]
}

fn entries() -> impl Strategy<Value = Vec<Entry>> {
    prop::collection::vec((index(), term()), 0..6)
        .prop_map(|v| v.into_iter().map(|(i, t)| entry(i, t)).collect::<Vec<_>>())
}

/// Entries that follow `prev` one by one, as an honest leader sends them.
fn contiguous() -> impl Strategy<Value = (u64, Vec<Entry>)> {
    (0u64..=14, 1u64..=5, 0usize..5).prop_map(|(prev, t, n)| {
        let entries = (1..=n as u64).map(|k| entry(prev + k, t)).collect();
        (prev, entries)
    })
}

fn meta() -> impl Strategy<Value = Option<SnapshotMeta>> {
    prop::option::weighted(
        0.9,
        (index(), term()).prop_map(|(index, term)| SnapshotMeta { index, term }),
    )
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        (any::<bool>(), index(), term(), any::<bool>()).prop_map(|(pre_vote, i, t, transfer)| {
            Body::RequestVote(RequestVote {
                pre_vote,
                last_log_index: i,
                last_log_term: t,
                transfer,
            })
        }),
        (any::<bool>(), any::<bool>()).prop_map(|(pre_vote, granted)| Body::RequestVoteResponse(
            RequestVoteResponse { pre_vote, granted }
        )),
        (index(), term(), entries(), index(), index()).prop_map(
            |(p, pt, entries, commit, round)| {
                Body::AppendEntries(AppendEntries {
                    prev_log_index: p,
                    prev_log_term: pt,
                    entries,
                    leader_commit: commit,
                    round,
                })
            }
        ),
        (contiguous(), term(), index()).prop_map(|((p, entries), pt, commit)| {
            Body::AppendEntries(AppendEntries {
                prev_log_index: p,
                prev_log_term: pt,
                entries,
                leader_commit: commit,
                round: 0,
            })
        }),
        (
            any::<bool>(),
            index(),
            index(),
            term(),
            index(),
            index(),
            any::<bool>()
        )
            .prop_map(
                |(
                    success,
                    match_index,
                    conflict_index,
                    conflict_term,
                    round,
                    rejected_index,
                    recovering,
                )| {
                    Body::AppendEntriesResponse(AppendEntriesResponse {
                        success,
                        match_index,
                        conflict_index,
                        conflict_term,
                        round,
                        rejected_index,
                        recovering,
                    })
                }
            ),
        (
            meta(),
            index(),
            prop::collection::vec(any::<u8>(), 0..200),
            any::<bool>(),
            index()
        )
            .prop_map(|(meta, offset, data, done, round)| {
                Body::InstallSnapshot(InstallSnapshot {
                    meta,
                    offset,
                    data: Bytes::from(data),
                    done,
                    round,
                })
            }),
        (
            meta(),
            index(),
            any::<bool>(),
            any::<bool>(),
            index(),
            any::<bool>()
        )
            .prop_map(|(meta, next_offset, done, reject, round, recovering)| {
                Body::InstallSnapshotResponse(InstallSnapshotResponse {
                    meta,
                    next_offset,
                    done,
                    reject,
                    round,
                    recovering,
                })
            }),
        index().prop_map(|nonce| Body::StatusQuery(StatusQuery { nonce })),
        (
            prop_oneof![Just(77u64), index()],
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(|(nonce, fresh, recovering)| Body::StatusReply(StatusReply {
                nonce,
                fresh,
                recovering
            })),
        term().prop_map(|floor| Body::RepairRequest(RepairRequest { floor })),
        Just(Body::TimeoutNow(TimeoutNow {})),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    (
        prop_oneof![4 => 2u64..=3, 1 => Just(1u64), 1 => Just(9u64)],
        prop_oneof![8 => Just(SELF), 1 => Just(7u64)],
        term(),
        prop::option::weighted(0.95, body()),
    )
        .prop_map(|(from, to, term, body)| Message {
            from,
            to,
            term,
            body,
        })
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        6 => message().prop_map(Event::Message),
        2 => Just(Event::Tick),
        1 => Just(Event::Propose),
    ]
}

fn start_state() -> impl Strategy<Value = Start> {
    prop_oneof![
        Just(Start::Follower),
        Just(Start::Leader),
        Just(Start::Candidate),
        Just(Start::AfterSnapshot),
        Just(Start::Recovering),
    ]
}

/// The terms of the committed entries the core still holds.
fn committed_terms(c: &RaftCore) -> Vec<(u64, u64)> {
    let log = c.log();
    (log.first_index()..=log.committed())
        .filter_map(|i| log.term(i).map(|t| (i, t)))
        .collect()
}

/// Cases per run: 2,000 by default, `PROPTEST_CASES` to run more.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2_000)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn no_sequence_of_peer_messages_panics_or_changes_a_committed_entry(
        s in start_state(),
        events in prop::collection::vec(event(), 1..40),
    ) {
        let mut c = start(s);
        let mut committed = committed_terms(&c);
        let mut commit = c.log().committed();
        for e in events {
            match e {
                Event::Message(m) => c.step(m),
                Event::Tick => c.tick(),
                Event::Propose => {
                    let _ = c.propose(Bytes::from_static(b"p"));
                }
            }
            drain(&mut c);
            let log = c.log();
            prop_assert!(log.committed() >= commit, "commit moved back {} -> {}", commit, log.committed());
            prop_assert!(log.committed() <= log.last_index());
            for &(i, t) in &committed {
                if let Some(now) = log.term(i) {
                    prop_assert_eq!(now, t, "committed entry {} changed term", i);
                }
            }
            commit = log.committed();
            committed = committed_terms(&c);
        }
    }
}
