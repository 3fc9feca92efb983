//! Peer input is checked, never asserted: a message that no correct peer
//! sends (entries that skip an index, terms that go back or run ahead of
//! the message's own, a second leader of this node's term, an answer about
//! entries this leader never held, a snapshot chunk too large, numbers too
//! large to add one to) is refused, counted by kind, and logged at most once
//! per `LOG_EVERY_TICKS` per kind. The core's own assertions stay for states
//! only a bug of this node can reach.

use std::collections::BTreeMap;

use kv_proto::raft::{message::Body, AppendEntries, InstallSnapshot, Message};

/// Terms and indexes above this are refused: no real cluster reaches them,
/// and the arithmetic on them (`term + 1`, `index + len`) must not overflow.
pub const MAX_TERM_OR_INDEX: u64 = 1 << 62;

/// Largest snapshot chunk accepted from a leader.
pub const MAX_SNAPSHOT_CHUNK_BYTES: usize = 16 << 20;

/// A refusal of each kind is logged at most once per this many ticks.
pub const LOG_EVERY_TICKS: u64 = 500;

/// Why a peer message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Refusal {
    /// Not addressed to this node, from itself, or from a non-member.
    Misaddressed,
    /// A message with no body.
    Empty,
    /// A term or index too large to be real.
    Overflow,
    /// Appended entries that do not follow `prev_log_index` one by one.
    GappedEntries,
    /// An entry whose term is above the message's, below `prev_log_term`,
    /// or below the entry before it.
    EntryTermOutOfOrder,
    /// A vote request claiming a last log term above its own term.
    VoteTermOutOfOrder,
    /// An append or snapshot from another node claiming to lead this node's
    /// own term.
    SecondLeader,
    /// An answer acknowledging entries beyond this leader's log.
    MatchBeyondLog,
    /// A snapshot chunk without metadata, at index or term 0, or of a term
    /// above the message's.
    BadSnapshotMeta,
    /// A snapshot chunk over `MAX_SNAPSHOT_CHUNK_BYTES`.
    SnapshotChunkTooLarge,
}

impl Refusal {
    /// A short description, for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Misaddressed => "misaddressed or from a non-member",
            Refusal::Empty => "no body",
            Refusal::Overflow => "term or index too large",
            Refusal::GappedEntries => "entries not contiguous after prev_log_index",
            Refusal::EntryTermOutOfOrder => "entry terms out of order",
            Refusal::VoteTermOutOfOrder => "vote request with a last log term above its term",
            Refusal::SecondLeader => "a second leader of this node's term",
            Refusal::MatchBeyondLog => "acknowledges entries beyond the leader's log",
            Refusal::BadSnapshotMeta => "bad snapshot metadata",
            Refusal::SnapshotChunkTooLarge => "snapshot chunk too large",
        }
    }
}

/// Checks what the message alone tells: numbers in range, entries in order,
/// snapshot chunks well formed.
pub(super) fn check_shape(m: &Message) -> Result<(), Refusal> {
    if m.term > MAX_TERM_OR_INDEX {
        return Err(Refusal::Overflow);
    }
    match &m.body {
        None => Err(Refusal::Empty),
        Some(Body::AppendEntries(ae)) => check_append(m.term, ae),
        Some(Body::InstallSnapshot(is)) => check_snapshot_chunk(m.term, is),
        Some(Body::RequestVote(rv)) => {
            if rv.last_log_index > MAX_TERM_OR_INDEX {
                Err(Refusal::Overflow)
            } else if rv.last_log_term > m.term {
                Err(Refusal::VoteTermOutOfOrder)
            } else {
                Ok(())
            }
        }
        Some(Body::AppendEntriesResponse(r)) => {
            let numbers = [
                r.match_index,
                r.conflict_index,
                r.conflict_term,
                r.rejected_index,
            ];
            if numbers.iter().any(|&n| n > MAX_TERM_OR_INDEX) {
                Err(Refusal::Overflow)
            } else {
                Ok(())
            }
        }
        Some(Body::RepairRequest(r)) if r.floor > MAX_TERM_OR_INDEX => Err(Refusal::Overflow),
        Some(_) => Ok(()),
    }
}

fn check_append(term: u64, ae: &AppendEntries) -> Result<(), Refusal> {
    let numbers = [ae.prev_log_index, ae.prev_log_term, ae.leader_commit];
    if numbers.iter().any(|&n| n > MAX_TERM_OR_INDEX) {
        return Err(Refusal::Overflow);
    }
    if ae.prev_log_term > term {
        return Err(Refusal::EntryTermOutOfOrder);
    }
    let mut expected = ae.prev_log_index;
    let mut last_term = ae.prev_log_term;
    for e in &ae.entries {
        expected += 1;
        if e.index != expected {
            return Err(Refusal::GappedEntries);
        }
        if e.term > term || e.term < last_term {
            return Err(Refusal::EntryTermOutOfOrder);
        }
        last_term = e.term;
    }
    if expected > MAX_TERM_OR_INDEX {
        return Err(Refusal::Overflow);
    }
    Ok(())
}

fn check_snapshot_chunk(term: u64, is: &InstallSnapshot) -> Result<(), Refusal> {
    let Some(meta) = is.meta else {
        return Err(Refusal::BadSnapshotMeta);
    };
    if meta.index > MAX_TERM_OR_INDEX || is.offset > MAX_TERM_OR_INDEX {
        return Err(Refusal::Overflow);
    }
    if meta.index == 0 || meta.term == 0 || meta.term > term {
        return Err(Refusal::BadSnapshotMeta);
    }
    if is.data.len() > MAX_SNAPSHOT_CHUNK_BYTES {
        return Err(Refusal::SnapshotChunkTooLarge);
    }
    Ok(())
}

/// Refusals counted by kind, and when each was last logged.
#[derive(Debug, Default)]
pub(super) struct Refusals {
    counts: BTreeMap<Refusal, u64>,
    /// Tick of the last log line per kind, and refusals since it.
    logged: BTreeMap<Refusal, (u64, u64)>,
}

impl Refusals {
    /// Counts one refusal; returns how many went unlogged before it if this
    /// one is to be logged now (at `tick`), None if it stays quiet.
    pub(super) fn record(&mut self, kind: Refusal, tick: u64) -> Option<u64> {
        *self.counts.entry(kind).or_default() += 1;
        let (last, quiet) = self.logged.entry(kind).or_insert((0, 0));
        if *last == 0 || tick >= *last + LOG_EVERY_TICKS {
            let suppressed = *quiet;
            *last = tick.max(1);
            *quiet = 0;
            Some(suppressed)
        } else {
            *quiet += 1;
            None
        }
    }

    /// Refusals so far, by kind.
    pub(super) fn counts(&self) -> &BTreeMap<Refusal, u64> {
        &self.counts
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use kv_proto::raft::{AppendEntriesResponse, Entry, RequestVote, SnapshotMeta};

    use super::*;

    fn append(prev: (u64, u64), entries: &[(u64, u64)]) -> Message {
        Message {
            from: 2,
            to: 1,
            term: 5,
            body: Some(Body::AppendEntries(AppendEntries {
                prev_log_index: prev.0,
                prev_log_term: prev.1,
                entries: entries
                    .iter()
                    .map(|&(index, term)| Entry {
                        index,
                        term,
                        data: Bytes::new(),
                    })
                    .collect(),
                leader_commit: 0,
                round: 0,
            })),
        }
    }

    #[test]
    fn appends_must_follow_prev_one_by_one_with_terms_in_order() {
        assert_eq!(check_shape(&append((3, 2), &[(4, 2), (5, 5)])), Ok(()));
        assert_eq!(check_shape(&append((3, 2), &[])), Ok(()));
        assert_eq!(
            check_shape(&append((3, 2), &[(4, 2), (6, 2)])),
            Err(Refusal::GappedEntries)
        );
        assert_eq!(
            check_shape(&append((3, 2), &[(3, 2)])),
            Err(Refusal::GappedEntries)
        );
        assert_eq!(
            check_shape(&append((3, 2), &[(4, 6)])),
            Err(Refusal::EntryTermOutOfOrder),
            "above the message's term"
        );
        assert_eq!(
            check_shape(&append((3, 2), &[(4, 3), (5, 2)])),
            Err(Refusal::EntryTermOutOfOrder),
            "terms go back"
        );
        assert_eq!(
            check_shape(&append((3, 2), &[(4, 1)])),
            Err(Refusal::EntryTermOutOfOrder),
            "below prev_log_term"
        );
        assert_eq!(
            check_shape(&append((u64::MAX, 2), &[])),
            Err(Refusal::Overflow)
        );
    }

    #[test]
    fn an_answer_at_the_largest_index_is_accepted_and_past_it_refused() {
        let answer = |match_index| Message {
            from: 2,
            to: 1,
            term: 5,
            body: Some(Body::AppendEntriesResponse(AppendEntriesResponse {
                success: true,
                match_index,
                ..Default::default()
            })),
        };
        assert_eq!(check_shape(&answer(MAX_TERM_OR_INDEX)), Ok(()));
        assert_eq!(
            check_shape(&answer(MAX_TERM_OR_INDEX + 1)),
            Err(Refusal::Overflow)
        );
    }

    #[test]
    fn every_kind_of_refusal_has_a_name_of_its_own() {
        let kinds = [
            Refusal::Misaddressed,
            Refusal::Empty,
            Refusal::Overflow,
            Refusal::GappedEntries,
            Refusal::EntryTermOutOfOrder,
            Refusal::VoteTermOutOfOrder,
            Refusal::SecondLeader,
            Refusal::MatchBeyondLog,
            Refusal::BadSnapshotMeta,
            Refusal::SnapshotChunkTooLarge,
        ];
        let names: std::collections::BTreeSet<&str> = kinds.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), kinds.len(), "names are distinct");
        assert!(!names.contains(""), "and never empty");
    }

    #[test]
    fn snapshot_chunks_and_votes_are_checked() {
        let chunk = |meta: Option<SnapshotMeta>, len: usize| Message {
            from: 2,
            to: 1,
            term: 5,
            body: Some(Body::InstallSnapshot(InstallSnapshot {
                meta,
                offset: 0,
                data: Bytes::from(vec![0; len]),
                done: false,
                round: 0,
            })),
        };
        let meta = |index, term| Some(SnapshotMeta { index, term });
        assert_eq!(check_shape(&chunk(meta(9, 5), 10)), Ok(()));
        assert_eq!(check_shape(&chunk(None, 10)), Err(Refusal::BadSnapshotMeta));
        assert_eq!(
            check_shape(&chunk(meta(9, 6), 10)),
            Err(Refusal::BadSnapshotMeta)
        );
        assert_eq!(
            check_shape(&chunk(meta(0, 1), 10)),
            Err(Refusal::BadSnapshotMeta)
        );
        assert_eq!(
            check_shape(&chunk(meta(9, 5), MAX_SNAPSHOT_CHUNK_BYTES + 1)),
            Err(Refusal::SnapshotChunkTooLarge)
        );
        let vote = |term, last_log_term, pre_vote| Message {
            from: 2,
            to: 1,
            term,
            body: Some(Body::RequestVote(RequestVote {
                pre_vote,
                last_log_index: 3,
                last_log_term,
                transfer: false,
            })),
        };
        assert_eq!(check_shape(&vote(5, 5, false)), Ok(()));
        assert_eq!(
            check_shape(&vote(5, 6, false)),
            Err(Refusal::VoteTermOutOfOrder)
        );
        assert_eq!(
            check_shape(&vote(5, 6, true)),
            Err(Refusal::VoteTermOutOfOrder)
        );
        assert_eq!(
            check_shape(&vote(u64::MAX, 1, false)),
            Err(Refusal::Overflow)
        );
    }

    #[test]
    fn each_kind_is_logged_at_most_once_per_interval_and_always_counted() {
        let mut r = Refusals::default();
        assert_eq!(r.record(Refusal::Empty, 10), Some(0));
        assert_eq!(r.record(Refusal::Empty, 11), None);
        assert_eq!(r.record(Refusal::GappedEntries, 12), Some(0), "kinds apart");
        assert_eq!(r.record(Refusal::Empty, 10 + LOG_EVERY_TICKS), Some(1));
        assert_eq!(r.counts()[&Refusal::Empty], 3);
    }
}
