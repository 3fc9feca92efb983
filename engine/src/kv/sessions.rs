//! Client sessions (Raft thesis §6.3): exactly-once writes.
//!
//! A client opens a session (a log entry; its id is a random number the
//! proposing node drew, so clients cannot guess each other's) and numbers
//! its writes. The state machine remembers, per session, the
//! result of each recent write; a write seen before is not applied again,
//! its first result is answered instead. Everything here changes only
//! through the log, never by a clock: a session expires when it has not
//! been used for `EXPIRE_AFTER_ENTRIES` log entries, and when
//! `MAX_SESSIONS` are open the least recently used one gives way to a new
//! one. Results are forgotten once the client says it has them
//! (`acked_below`), beyond `RESULTS_PER_SESSION`, or when too large to keep.
//! The sessions are part of every snapshot.

use std::collections::BTreeMap;

use bytes::Bytes;
use imbl::OrdMap;
use kv_proto::command::{SessionRecord, SessionResult};

use super::CommandResult;

/// Sessions open at once, at most.
pub const MAX_SESSIONS: usize = 10_000;
/// Results remembered per session, at most (a client's pipeline depth:
/// the servers' default `--max-pipeline`). With `MAX_SESSIONS` and
/// `MAX_KEPT_VALUE_BYTES` this bounds what sessions hold on every replica
/// to about 10,000 x 256 x 130 bytes (330 MB) in the worst case; a client
/// that says which answers it has (`acked_below`) keeps only those in
/// flight.
pub const RESULTS_PER_SESSION: usize = 256;
/// A session unused for this many log entries is closed.
pub const EXPIRE_AFTER_ENTRIES: u64 = 10_000_000;
/// A result carrying a value longer than this is not kept: a repeat of
/// its write is told it was applied, without the value.
pub const MAX_KEPT_VALUE_BYTES: usize = 64;

/// What a session says about a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// A write not seen before: apply it.
    New,
    /// Seen before: its first result.
    Repeat(CommandResult),
    /// No such session (never opened, expired or given way): refused.
    NoSession,
    /// Seen before, but its result is forgotten (the client said it had
    /// it, or it fell out of the window): refused, nothing applied.
    Forgotten,
}

/// One session's memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Session {
    /// Log index of the last write in it.
    pub last_used: u64,
    /// Every result below this sequence number was forgotten (the client
    /// said it had them, or they fell out of the window).
    pub acked_below: u64,
    /// Results of recent writes, by sequence number.
    pub results: BTreeMap<u64, CommandResult>,
}

/// Every open session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sessions {
    open: OrdMap<u64, Session>,
    /// Sum of a hash of each session's id, last use and newest sequence
    /// number (part of the store's digest).
    digest: u64,
}

impl Sessions {
    /// Opens a session at log `index` under the id its proposer drew
    /// (`proposed`), closing expired ones and, if full, the least recently
    /// used. The result names the id the session got (see `free_id`).
    pub fn open(&mut self, index: u64, proposed: u64) -> CommandResult {
        let expired: Vec<u64> = self
            .open
            .iter()
            .filter(|(_, s)| s.last_used.saturating_add(EXPIRE_AFTER_ENTRIES) < index)
            .map(|(&id, _)| id)
            .collect();
        for id in expired {
            self.close(id);
        }
        if self.open.len() >= MAX_SESSIONS {
            let lru = self
                .open
                .iter()
                .min_by_key(|(&id, s)| (s.last_used, id))
                .map(|(&id, _)| id);
            if let Some(id) = lru {
                self.close(id);
            }
        }
        let id = self.free_id(proposed, index);
        let session = Session {
            last_used: index,
            ..Session::default()
        };
        self.digest = self.digest.wrapping_add(hash(id, &session));
        self.open.insert(id, session);
        debug_assert!(self.open.len() <= MAX_SESSIONS, "sessions stay bounded");
        CommandResult::Session(id)
    }

    /// The id a new session gets: the one its proposer drew or, if that is
    /// 0 (no session) or open already, the first free one of a sequence
    /// derived from it and the entry's index, the same on every replica.
    /// Ends: at most `MAX_SESSIONS` ids are taken.
    fn free_id(&self, proposed: u64, index: u64) -> u64 {
        let mut id = proposed;
        let mut salt = index;
        while id == 0 || self.open.contains_key(&id) {
            salt = salt.wrapping_add(1);
            id = splitmix64(id ^ salt);
        }
        id
    }

    fn close(&mut self, id: u64) {
        if let Some(old) = self.open.remove(&id) {
            self.digest = self.digest.wrapping_sub(hash(id, &old));
        }
    }

    /// Whether write `seq` of session `id` was seen; forgets the results
    /// the client says it has.
    pub fn check(&mut self, id: u64, seq: u64, acked_below: u64) -> Seen {
        let Some(session) = self.open.get(&id) else {
            return Seen::NoSession;
        };
        if let Some(result) = session.results.get(&seq) {
            return Seen::Repeat(result.clone());
        }
        if seq < session.acked_below {
            return Seen::Forgotten;
        }
        if acked_below > session.acked_below {
            let before = hash(id, session);
            if let Some(s) = self.open.get_mut(&id) {
                s.acked_below = acked_below;
                s.results = s.results.split_off(&acked_below);
                let after = hash(id, s);
                self.digest = self.digest.wrapping_sub(before).wrapping_add(after);
            }
        }
        Seen::New
    }

    /// Records the result of write `seq` of session `id`, applied at `index`.
    pub fn record(&mut self, id: u64, seq: u64, result: &CommandResult, index: u64) {
        let Some(session) = self.open.get_mut(&id) else {
            return;
        };
        let before = hash(id, session);
        session.last_used = index;
        session.results.insert(seq, keepable(result));
        while session.results.len() > RESULTS_PER_SESSION {
            // Fell out of the window: a repeat of it can no longer be told
            // from a new write, so it will be refused.
            if let Some((old, _)) = session.results.pop_first() {
                session.acked_below = session.acked_below.max(old + 1);
            }
        }
        let after = hash(id, session);
        self.digest = self.digest.wrapping_sub(before).wrapping_add(after);
    }

    /// Number of open sessions.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// True if none is open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// The sessions' part of the store's digest.
    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// Every session as a snapshot record, by id, made as they are read.
    pub fn records(&self) -> impl Iterator<Item = SessionRecord> + '_ {
        self.open.iter().map(|(&id, s)| SessionRecord {
            id,
            last_used: s.last_used,
            acked_below: s.acked_below,
            results: s
                .results
                .iter()
                .map(|(&seq, r)| encode_result(seq, r))
                .collect(),
        })
    }

    /// Adds a session read back from a snapshot.
    pub fn restore(&mut self, record: &SessionRecord) -> Result<(), &'static str> {
        if record.id == 0 {
            return Err("a session record without an id");
        }
        if record.results.len() > RESULTS_PER_SESSION {
            return Err("a session record with too many results");
        }
        if self.open.len() >= MAX_SESSIONS && !self.open.contains_key(&record.id) {
            return Err("more sessions than a store keeps");
        }
        let mut results = BTreeMap::new();
        for r in &record.results {
            results.insert(r.seq, decode_result(r)?);
        }
        let session = Session {
            last_used: record.last_used,
            acked_below: record.acked_below,
            results,
        };
        self.close(record.id);
        self.digest = self.digest.wrapping_add(hash(record.id, &session));
        self.open.insert(record.id, session);
        Ok(())
    }
}

/// The result as remembered: a value too large to keep is left out.
fn keepable(result: &CommandResult) -> CommandResult {
    let too_big = |v: &Option<Bytes>| v.as_ref().is_some_and(|v| v.len() > MAX_KEPT_VALUE_BYTES);
    match result {
        CommandResult::Old(v) | CommandResult::CasFailed { current: v } if too_big(v) => {
            CommandResult::Refused(
                "this write was applied before; its answer was too large to keep".into(),
            )
        }
        r => r.clone(),
    }
}

/// A 64-bit mixer (splitmix64's finaliser): nearby inputs give unrelated
/// outputs.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A session's contribution to the digest.
fn hash(id: u64, s: &Session) -> u64 {
    let newest = s.results.keys().next_back().copied().unwrap_or(0);
    let mut h = 0x9e37_79b9_7f4a_7c15u64;
    for x in [
        id,
        s.last_used,
        s.acked_below,
        newest,
        s.results.len() as u64,
    ] {
        h ^= x;
        h = h.wrapping_mul(0x100_0000_01b3);
        h ^= h >> 29;
    }
    h
}

const KIND_OK: u32 = 0;
const KIND_NOT_FOUND: u32 = 1;
const KIND_CAS_FAILED: u32 = 2;
const KIND_INT: u32 = 3;
const KIND_OLD: u32 = 4;
const KIND_NOT_SET: u32 = 5;
const KIND_REFUSED: u32 = 6;
const KIND_SESSION: u32 = 7;

fn encode_result(seq: u64, r: &CommandResult) -> SessionResult {
    let mut out = SessionResult {
        seq,
        ..SessionResult::default()
    };
    let value = |out: &mut SessionResult, v: &Option<Bytes>| {
        out.has_value = v.is_some();
        out.value = v.clone().unwrap_or_default();
    };
    match r {
        CommandResult::Ok => out.kind = KIND_OK,
        CommandResult::NotFound => out.kind = KIND_NOT_FOUND,
        CommandResult::CasFailed { current } => {
            out.kind = KIND_CAS_FAILED;
            value(&mut out, current);
        }
        CommandResult::Int(n) => {
            out.kind = KIND_INT;
            out.number = *n;
        }
        CommandResult::Old(v) => {
            out.kind = KIND_OLD;
            value(&mut out, v);
        }
        CommandResult::NotSet => out.kind = KIND_NOT_SET,
        CommandResult::Refused(why) => {
            out.kind = KIND_REFUSED;
            out.value = Bytes::from(why.clone().into_bytes());
            out.has_value = true;
        }
        CommandResult::Session(id) => {
            out.kind = KIND_SESSION;
            out.number = *id as i64;
        }
    }
    out
}

fn decode_result(r: &SessionResult) -> Result<CommandResult, &'static str> {
    let value = || r.has_value.then(|| r.value.clone());
    Ok(match r.kind {
        KIND_OK => CommandResult::Ok,
        KIND_NOT_FOUND => CommandResult::NotFound,
        KIND_CAS_FAILED => CommandResult::CasFailed { current: value() },
        KIND_INT => CommandResult::Int(r.number),
        KIND_OLD => CommandResult::Old(value()),
        KIND_NOT_SET => CommandResult::NotSet,
        KIND_REFUSED => CommandResult::Refused(String::from_utf8_lossy(&r.value).into_owned()),
        KIND_SESSION => CommandResult::Session(r.number as u64),
        _ => return Err("unknown session result kind"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_write_gets_its_first_result_and_a_forgotten_one_is_refused() {
        let mut s = Sessions::default();
        assert_eq!(s.open(4, 5), CommandResult::Session(5));
        assert_eq!(s.check(5, 1, 0), Seen::New);
        s.record(5, 1, &CommandResult::Int(1), 6);
        assert_eq!(s.check(5, 1, 0), Seen::Repeat(CommandResult::Int(1)));
        assert_eq!(s.check(5, 2, 2), Seen::New, "the client has answer 1");
        s.record(5, 2, &CommandResult::Int(2), 7);
        assert_eq!(s.check(5, 1, 2), Seen::Forgotten);
        assert_eq!(s.check(9, 1, 0), Seen::NoSession);
    }

    #[test]
    fn sessions_are_bounded_and_the_least_recently_used_gives_way() {
        let mut s = Sessions::default();
        for i in 1..=MAX_SESSIONS as u64 {
            s.open(i, i);
        }
        s.check(1, 1, 0);
        s.record(1, 1, &CommandResult::Ok, 20_000);
        s.open(20_001, 20_001);
        assert_eq!(s.len(), MAX_SESSIONS);
        assert_eq!(
            s.check(2, 1, 0),
            Seen::NoSession,
            "session 2 was least recently used"
        );
        assert_eq!(s.check(1, 1, 0), Seen::Repeat(CommandResult::Ok));
    }

    #[test]
    fn an_answer_is_kept_up_to_the_value_limit_and_refused_past_it() {
        let mut s = Sessions::default();
        assert!(s.is_empty());
        s.open(1, 1);
        assert!(!s.is_empty());
        let at_limit = Bytes::from(vec![b'v'; MAX_KEPT_VALUE_BYTES]);
        let past_it = Bytes::from(vec![b'v'; MAX_KEPT_VALUE_BYTES + 1]);
        s.record(1, 1, &CommandResult::Old(Some(at_limit.clone())), 2);
        s.record(1, 2, &CommandResult::Old(Some(past_it)), 3);
        assert_eq!(
            s.check(1, 1, 0),
            Seen::Repeat(CommandResult::Old(Some(at_limit)))
        );
        assert!(matches!(
            s.check(1, 2, 0),
            Seen::Repeat(CommandResult::Refused(_))
        ));
    }

    #[test]
    fn sessions_round_trip_through_records_with_the_same_digest() {
        let mut s = Sessions::default();
        s.open(3, 3);
        s.record(3, 1, &CommandResult::Old(Some(Bytes::from("x"))), 4);
        s.record(3, 2, &CommandResult::Refused("no".into()), 5);
        let mut back = Sessions::default();
        for r in s.records() {
            back.restore(&r).unwrap();
        }
        assert_eq!(back, s);
        assert_eq!(back.digest(), s.digest());
    }

    #[test]
    fn a_session_gets_the_id_its_proposer_drew_or_a_free_one_derived_the_same_everywhere() {
        let mut a = Sessions::default();
        let mut b = Sessions::default();
        for s in [&mut a, &mut b] {
            assert_eq!(s.open(7, 0xdead_beef), CommandResult::Session(0xdead_beef));
        }
        // The same id again (a collision), and none at all: each replica
        // picks the same other id, never 0 and never one already open.
        let (CommandResult::Session(x), CommandResult::Session(y)) =
            (a.open(8, 0xdead_beef), b.open(8, 0xdead_beef))
        else {
            panic!("sessions open");
        };
        assert_eq!(x, y, "derived alike on every replica");
        assert_ne!(x, 0xdead_beef);
        let CommandResult::Session(z) = a.open(9, 0) else {
            panic!("a session opens");
        };
        assert!(z != 0 && z != x && z != 0xdead_beef);
        assert_eq!(a.len(), 3);
        // A write naming an id nobody drew is refused.
        assert_eq!(a.check(9, 1, 0), Seen::NoSession, "the index is not the id");
    }
}
