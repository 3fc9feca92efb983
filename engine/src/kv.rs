//! The key-value state machine the log drives: SET, DEL and CAS applied
//! deterministically, and the whole map serialised for snapshots.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use kv_proto::command::{command::Op, Command, Pair};
use prost::Message as _;

/// What applying one command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandResult {
    /// SET, or a DEL / CAS that took effect.
    Ok,
    /// DEL of an absent key.
    NotFound,
    /// CAS whose expected value did not match; the current value (None: absent).
    CasFailed {
        /// The value the key holds.
        current: Option<Bytes>,
    },
}

/// Why bytes could not be decoded as a command or a snapshot.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KvError {
    /// The bytes are not a valid protobuf `Command`.
    #[error("undecodable command: {0}")]
    BadCommand(String),
    /// A command with no operation set.
    #[error("command without an operation")]
    EmptyCommand,
    /// The snapshot bytes are not a valid sequence of pairs.
    #[error("undecodable snapshot at byte {offset}: {reason}")]
    BadSnapshot {
        /// Where decoding stopped.
        offset: usize,
        /// What was wrong.
        reason: String,
    },
}

/// The map every node builds by applying the same commands in the same order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KvStore {
    map: BTreeMap<Bytes, Bytes>,
}

impl KvStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one command.
    pub fn apply(&mut self, cmd: &Command) -> CommandResult {
        match &cmd.op {
            Some(Op::Set(set)) => {
                self.map.insert(set.key.clone(), set.value.clone());
                CommandResult::Ok
            }
            Some(Op::Del(del)) => match self.map.remove(&del.key) {
                Some(_) => CommandResult::Ok,
                None => CommandResult::NotFound,
            },
            Some(Op::Cas(cas)) => match self.map.get(&cas.key) {
                Some(current) if *current == cas.expected => {
                    self.map.insert(cas.key.clone(), cas.new.clone());
                    CommandResult::Ok
                }
                current => CommandResult::CasFailed {
                    current: current.cloned(),
                },
            },
            // Decoding refuses these; a no-op keeps apply total.
            None => CommandResult::Ok,
        }
    }

    /// Decodes a log entry's data and applies it.
    pub fn apply_entry_data(&mut self, data: &[u8]) -> Result<CommandResult, KvError> {
        let cmd = decode_command(data)?;
        Ok(self.apply(&cmd))
    }

    /// The value at `key`.
    pub fn get(&self, key: &[u8]) -> Option<&Bytes> {
        self.map.get(key)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True if no key is set.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The whole map as length-delimited `Pair`s in key order: the same map
    /// always gives the same bytes.
    pub fn snapshot(&self) -> Bytes {
        let size: usize = self.map.iter().map(|(k, v)| k.len() + v.len() + 12).sum();
        let mut out = BytesMut::with_capacity(size);
        for (key, value) in &self.map {
            let pair = Pair {
                key: key.clone(),
                value: value.clone(),
            };
            // Writing into a BytesMut that grows cannot fail.
            let _ = pair.encode_length_delimited(&mut out);
        }
        out.freeze()
    }

    /// Rebuilds a store from `snapshot()` bytes.
    pub fn restore(data: &[u8]) -> Result<Self, KvError> {
        let mut map = BTreeMap::new();
        let mut buf = Bytes::copy_from_slice(data);
        let total = buf.len();
        while !buf.is_empty() {
            let offset = total - buf.len();
            let pair =
                Pair::decode_length_delimited(&mut buf).map_err(|e| KvError::BadSnapshot {
                    offset,
                    reason: e.to_string(),
                })?;
            map.insert(pair.key, pair.value);
        }
        Ok(KvStore { map })
    }

    /// A stable 64-bit digest of the whole map (FNV-1a over the snapshot
    /// encoding), to compare replicas cheaply.
    pub fn digest(&self) -> u64 {
        let mut h = 0xcbf29ce484222325u64;
        let mut mix = |bytes: &[u8]| {
            for &b in (bytes.len() as u64).to_le_bytes().iter().chain(bytes) {
                h ^= b as u64;
                h = h.wrapping_mul(0x100000001b3);
            }
        };
        for (k, v) in &self.map {
            mix(k);
            mix(v);
        }
        h
    }
}

/// Encodes a command as log entry data.
pub fn encode_command(cmd: &Command) -> Bytes {
    Bytes::from(cmd.encode_to_vec())
}

/// Decodes log entry data into a command.
pub fn decode_command(data: &[u8]) -> Result<Command, KvError> {
    let cmd = Command::decode(data).map_err(|e| KvError::BadCommand(e.to_string()))?;
    if cmd.op.is_none() {
        return Err(KvError::EmptyCommand);
    }
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    use kv_proto::command::{Cas, Del, Set};

    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn set(k: &str, v: &str) -> Command {
        Command {
            op: Some(Op::Set(Set {
                key: b(k),
                value: b(v),
            })),
        }
    }

    fn del(k: &str) -> Command {
        Command {
            op: Some(Op::Del(Del { key: b(k) })),
        }
    }

    fn cas(k: &str, e: &str, n: &str) -> Command {
        Command {
            op: Some(Op::Cas(Cas {
                key: b(k),
                expected: b(e),
                new: b(n),
            })),
        }
    }

    #[test]
    fn set_then_get_returns_the_value() {
        let mut kv = KvStore::new();
        assert_eq!(kv.apply(&set("a", "1")), CommandResult::Ok);
        assert_eq!(kv.apply(&set("a", "2")), CommandResult::Ok);
        assert_eq!(kv.get(b"a"), Some(&b("2")));
        assert_eq!(kv.get(b"b"), None);
    }

    #[test]
    fn del_reports_whether_the_key_existed() {
        let mut kv = KvStore::new();
        kv.apply(&set("a", "1"));
        assert_eq!(kv.apply(&del("a")), CommandResult::Ok);
        assert_eq!(kv.apply(&del("a")), CommandResult::NotFound);
        assert!(kv.is_empty());
    }

    #[test]
    fn cas_writes_only_on_match_and_reports_the_current_value() {
        let mut kv = KvStore::new();
        assert_eq!(
            kv.apply(&cas("a", "x", "y")),
            CommandResult::CasFailed { current: None }
        );
        kv.apply(&set("a", "1"));
        assert_eq!(
            kv.apply(&cas("a", "2", "3")),
            CommandResult::CasFailed {
                current: Some(b("1"))
            }
        );
        assert_eq!(kv.apply(&cas("a", "1", "3")), CommandResult::Ok);
        assert_eq!(kv.get(b"a"), Some(&b("3")));
    }

    #[test]
    fn snapshot_round_trips_and_is_deterministic() {
        let mut a = KvStore::new();
        let mut b2 = KvStore::new();
        for (k, v) in [("z", "1"), ("a", ""), ("m", "3")] {
            a.apply(&set(k, v));
        }
        for (k, v) in [("m", "3"), ("z", "1"), ("a", "")] {
            b2.apply(&set(k, v));
        }
        assert_eq!(
            a.snapshot(),
            b2.snapshot(),
            "insertion order must not matter"
        );
        assert_eq!(a.digest(), b2.digest());
        let restored = KvStore::restore(&a.snapshot()).unwrap();
        assert_eq!(restored, a);
        assert_eq!(KvStore::restore(&[]).unwrap(), KvStore::new());
    }

    #[test]
    fn digest_tells_different_maps_apart() {
        let mut a = KvStore::new();
        let mut b2 = KvStore::new();
        a.apply(&set("ab", "c"));
        b2.apply(&set("a", "bc"));
        assert_ne!(a.digest(), b2.digest());
    }

    #[test]
    fn commands_round_trip_and_garbage_is_refused() {
        let cmd = cas("k", "old", "new");
        assert_eq!(decode_command(&encode_command(&cmd)).unwrap(), cmd);
        assert_eq!(decode_command(&[]), Err(KvError::EmptyCommand));
        assert!(matches!(
            decode_command(&[0xff, 0xff, 0xff]),
            Err(KvError::BadCommand(_))
        ));
        let mut kv = KvStore::new();
        assert!(kv.apply_entry_data(&[0x0a, 0x05, 0x01]).is_err());
        assert!(KvStore::restore(&[0x05, 0x01]).is_err());
    }
}
