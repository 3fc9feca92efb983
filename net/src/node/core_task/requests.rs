//! What a client operation becomes inside the node: a command for the log
//! (a write, tagged with its session) or a query answered from the state
//! machine once a read is confirmed; and how results become replies.

use bytes::Bytes;
use kv_engine::kv::{CommandResult, KvStore};
use kv_proto::command::{
    command::Op, set_if::Condition, Append, Cas, Command, Del, DelMany, Flush, Incr, MSet, MSetNx,
    OpenSession, Pair, Set, SetIf,
};

use crate::api::{ClientOp, ClientReply, SessionTag, SetCondition, MAX_KEYS_ANSWERED};

/// KEYS is refused on a store holding more keys than this (a walk of
/// 200,000 keys takes the core some milliseconds; SCAN pages instead).
pub(crate) const MAX_KEYS_LOOKED_AT: usize = 200_000;

/// A read waiting for confirmation, as the state machine will answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ReadQuery {
    Get(Bytes),
    MGet(Vec<Bytes>),
    Exists(Vec<Bytes>),
    StrLen(Bytes),
    DbSize,
    Scan {
        from: Bytes,
        pattern: Option<Bytes>,
        count: usize,
    },
    Keys(Bytes),
}

/// What an operation asks of the node.
pub(super) enum Work {
    /// A write to propose.
    Write(Command),
    /// A read to confirm, then answer.
    Read(ReadQuery),
    /// Neither (status, transfer): the caller handles it.
    Other(ClientOp),
}

/// Sorts an operation into a write (with its session tag), a read, or
/// something else.
pub(super) fn work_of(op: ClientOp, session: Option<SessionTag>) -> Work {
    let pairs = |pairs: Vec<(Bytes, Bytes)>| -> Vec<Pair> {
        pairs
            .into_iter()
            .map(|(key, value)| Pair {
                key,
                value,
                session: None,
            })
            .collect()
    };
    let op = match op {
        ClientOp::Get { key } => return Work::Read(ReadQuery::Get(key)),
        ClientOp::MGet { keys } => return Work::Read(ReadQuery::MGet(keys)),
        ClientOp::Exists { keys } => return Work::Read(ReadQuery::Exists(keys)),
        ClientOp::StrLen { key } => return Work::Read(ReadQuery::StrLen(key)),
        ClientOp::DbSize => return Work::Read(ReadQuery::DbSize),
        ClientOp::Scan {
            from,
            pattern,
            count,
        } => {
            return Work::Read(ReadQuery::Scan {
                from,
                pattern,
                count,
            })
        }
        ClientOp::Keys { pattern } => return Work::Read(ReadQuery::Keys(pattern)),
        other @ (ClientOp::Status | ClientOp::TransferLeader { .. }) => return Work::Other(other),
        ClientOp::Set { key, value } => Op::Set(Set { key, value }),
        ClientOp::Del { key } => Op::Del(Del { key }),
        ClientOp::Cas { key, expected, new } => Op::Cas(Cas { key, expected, new }),
        ClientOp::MSet { pairs: p } => Op::Mset(MSet { pairs: pairs(p) }),
        ClientOp::SetIf {
            key,
            value,
            condition,
            return_old,
        } => Op::SetIf(SetIf {
            key,
            value,
            condition: match condition {
                SetCondition::Always => Condition::Always,
                SetCondition::IfAbsent => Condition::IfAbsent,
                SetCondition::IfPresent => Condition::IfPresent,
            } as i32,
            return_old,
        }),
        ClientOp::Incr { key, by } => Op::Incr(Incr { key, by }),
        ClientOp::Append { key, value } => Op::Append(Append { key, value }),
        ClientOp::DelMany { keys } => Op::DelMany(DelMany { keys }),
        ClientOp::MSetNx { pairs: p } => Op::Msetnx(MSetNx { pairs: pairs(p) }),
        ClientOp::Flush => Op::Flush(Flush {}),
        // Drawn at random so that no client can guess another's session.
        ClientOp::OpenSession => Op::OpenSession(OpenSession { id: rand::random() }),
    };
    let tag = session.unwrap_or(SessionTag {
        session: 0,
        seq: 0,
        acked_below: 0,
    });
    Work::Write(Command {
        op: Some(op),
        session: tag.session,
        seq: tag.seq,
        acked_below: tag.acked_below,
    })
}

/// The answer to a confirmed read, from the state machine as applied.
pub(super) fn answer(query: &ReadQuery, kv: &KvStore) -> ClientReply {
    let count = |n: usize| ClientReply::Int(i64::try_from(n).unwrap_or(i64::MAX));
    match query {
        ReadQuery::Get(key) => match kv.get_shared(key) {
            Some(v) => ClientReply::Value(v),
            None => ClientReply::NotFound,
        },
        ReadQuery::MGet(keys) => {
            ClientReply::Values(keys.iter().map(|k| kv.get_shared(k)).collect())
        }
        ReadQuery::Exists(keys) => count(keys.iter().filter(|k| kv.get(k).is_some()).count()),
        ReadQuery::StrLen(key) => count(kv.get(key).map_or(0, <[u8]>::len)),
        ReadQuery::DbSize => count(kv.len()),
        ReadQuery::Scan {
            from,
            pattern,
            count,
        } => {
            let (next, keys) = kv.scan(from, pattern.as_deref(), *count);
            ClientReply::Page { next, keys }
        }
        ReadQuery::Keys(pattern) => keys_matching(kv, pattern),
    }
}

/// Every key matching `pattern`, refused when that could take the core
/// long (it answers nothing else meanwhile, heartbeats included).
fn keys_matching(kv: &KvStore, pattern: &[u8]) -> ClientReply {
    if kv.len() > MAX_KEYS_LOOKED_AT {
        return ClientReply::Refused(format!(
            "KEYS looks at every key and this store holds more than {MAX_KEYS_LOOKED_AT}: use SCAN"
        ));
    }
    // A scan page looks at a bounded number of keys: walk them all.
    let mut keys = Vec::new();
    let mut from = Bytes::new();
    loop {
        let want = MAX_KEYS_ANSWERED + 1 - keys.len();
        let (next, page) = kv.scan(&from, Some(pattern), want);
        keys.extend(page);
        if keys.len() > MAX_KEYS_ANSWERED {
            return ClientReply::Refused(format!(
                "more than {MAX_KEYS_ANSWERED} keys match: use SCAN"
            ));
        }
        match next {
            Some(next) => from = next,
            None => return ClientReply::Keys(keys),
        }
    }
}

/// A write's result as the client is told it.
pub(super) fn reply_of(result: CommandResult) -> ClientReply {
    match result {
        CommandResult::Ok => ClientReply::Ok,
        CommandResult::NotFound => ClientReply::NotFound,
        CommandResult::CasFailed { current } => ClientReply::CasFailed(current),
        CommandResult::Int(n) => ClientReply::Int(n),
        CommandResult::Old(v) => ClientReply::Old(v),
        CommandResult::NotSet => ClientReply::NotSet,
        CommandResult::Refused(why) => ClientReply::Refused(why),
        CommandResult::Session(id) => ClientReply::Session(id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_of(keys: impl Iterator<Item = String>) -> KvStore {
        let mut kv = KvStore::new();
        for key in keys {
            let set = Set {
                key: Bytes::from(key),
                value: Bytes::from_static(b"v"),
            };
            kv.apply(&Command {
                op: Some(Op::Set(set)),
                ..Default::default()
            });
        }
        kv
    }

    #[test]
    fn keys_finds_a_match_past_the_first_pages_of_a_large_store() {
        // More keys than one scan page looks at, the only match last.
        let mut kv = store_of((0..150_000).map(|i| format!("a{i:06}")));
        kv.apply(&Command {
            op: Some(Op::Set(Set {
                key: Bytes::from_static(b"zzz"),
                value: Bytes::from_static(b"v"),
            })),
            ..Default::default()
        });
        assert_eq!(
            keys_matching(&kv, b"zzz*"),
            ClientReply::Keys(vec![Bytes::from_static(b"zzz")])
        );
        match keys_matching(&kv, b"a*") {
            ClientReply::Refused(why) => assert!(why.contains("use SCAN"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn keys_is_refused_on_a_store_too_large_to_walk() {
        let kv = store_of((0..=MAX_KEYS_LOOKED_AT).map(|i| format!("k{i}")));
        assert!(matches!(
            keys_matching(&kv, b"nothing*"),
            ClientReply::Refused(_)
        ));
    }
}
