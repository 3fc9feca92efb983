//! WAL records: framing, checksums, and telling a torn tail from corruption.

use kv_proto::raft::{Entry, HardState, SnapshotMeta};
use prost::Message as _;

/// Bytes of the record header (length and checksum).
pub const HEADER_BYTES: usize = 8;
/// Longest record accepted when decoding: a bound for garbage lengths.
pub const MAX_RECORD_BYTES: usize = 256 << 20;

const TYPE_ENTRY: u8 = 1;
const TYPE_HARD_STATE: u8 = 2;
const TYPE_SNAPSHOT: u8 = 3;

/// One WAL record.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// A log entry. An entry at an index already in the log replaces it and
    /// everything after it (a truncation of a conflicting suffix).
    Entry(Entry),
    /// Term, vote and commit index.
    HardState(HardState),
    /// The log now starts right after this snapshot (installed from a leader).
    Snapshot(SnapshotMeta),
}

/// Appends `record` to `out`, framed and checksummed.
pub fn encode(record: &Record, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_BYTES]);
    let (kind, result) = match record {
        Record::Entry(e) => (TYPE_ENTRY, {
            out.push(TYPE_ENTRY);
            e.encode(out)
        }),
        Record::HardState(h) => (TYPE_HARD_STATE, {
            out.push(TYPE_HARD_STATE);
            h.encode(out)
        }),
        Record::Snapshot(m) => (TYPE_SNAPSHOT, {
            out.push(TYPE_SNAPSHOT);
            m.encode(out)
        }),
    };
    // Encoding into a Vec only fails for lack of capacity, which Vec grows.
    debug_assert!(result.is_ok(), "encoding record type {kind}");
    let body = &out[start + HEADER_BYTES..];
    let len = body.len() as u32;
    let crc = crc32fast::hash(body);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Why a record at some offset is not valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadRecord {
    /// Fewer bytes than a header or than the announced length.
    Incomplete,
    /// A zero or absurd length.
    BadLength(u32),
    /// The checksum does not match.
    Checksum,
    /// The checksum matches but the payload does not decode.
    Undecodable(String),
}

impl std::fmt::Display for BadRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadRecord::Incomplete => write!(f, "incomplete record"),
            BadRecord::BadLength(l) => write!(f, "bad record length {l}"),
            BadRecord::Checksum => write!(f, "checksum mismatch"),
            BadRecord::Undecodable(e) => write!(f, "undecodable record: {e}"),
        }
    }
}

/// Decodes the record at the start of `bytes`; returns it and its size.
pub fn decode_one(bytes: &[u8]) -> Result<(Record, usize), BadRecord> {
    if bytes.len() < HEADER_BYTES {
        return Err(BadRecord::Incomplete);
    }
    let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if len == 0 || len as usize > MAX_RECORD_BYTES {
        return Err(BadRecord::BadLength(len));
    }
    let end = HEADER_BYTES + len as usize;
    if bytes.len() < end {
        return Err(BadRecord::Incomplete);
    }
    let crc = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    let body = &bytes[HEADER_BYTES..end];
    if crc32fast::hash(body) != crc {
        return Err(BadRecord::Checksum);
    }
    let payload = &body[1..];
    let bad = |e: prost::DecodeError| BadRecord::Undecodable(e.to_string());
    let record = match body[0] {
        TYPE_ENTRY => Record::Entry(Entry::decode(payload).map_err(bad)?),
        TYPE_HARD_STATE => Record::HardState(HardState::decode(payload).map_err(bad)?),
        TYPE_SNAPSHOT => Record::Snapshot(SnapshotMeta::decode(payload).map_err(bad)?),
        other => {
            return Err(BadRecord::Undecodable(format!(
                "unknown record type {other}"
            )))
        }
    };
    Ok((record, end))
}

/// The records of one segment file.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// Records with their byte offsets.
    pub records: Vec<(u64, Record)>,
    /// Bytes holding valid records; anything after is a torn tail.
    pub valid_len: u64,
    /// Why the bytes after `valid_len` are not records (None: clean end).
    pub torn: Option<BadRecord>,
}

/// A bad record followed by valid data: acknowledged data was damaged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corruption {
    /// Offset of the bad record.
    pub offset: u64,
    /// What was wrong with it.
    pub reason: BadRecord,
    /// Offset of a valid record found after it.
    pub valid_after: u64,
}

/// Decodes a whole segment. A bad record with nothing valid after it is a
/// torn tail (a crash mid-write, never acknowledged); a bad record followed
/// by any valid record is corruption.
pub fn decode_segment(bytes: &[u8]) -> Result<Segment, Corruption> {
    let mut records = Vec::new();
    let mut offset = 0usize;
    while offset < bytes.len() {
        match decode_one(&bytes[offset..]) {
            Ok((record, size)) => {
                records.push((offset as u64, record));
                offset += size;
            }
            Err(reason) => {
                if let Some(valid_after) = find_valid_record(bytes, offset + 1) {
                    return Err(Corruption {
                        offset: offset as u64,
                        reason,
                        valid_after: valid_after as u64,
                    });
                }
                return Ok(Segment {
                    records,
                    valid_len: offset as u64,
                    torn: Some(reason),
                });
            }
        }
    }
    Ok(Segment {
        records,
        valid_len: offset as u64,
        torn: None,
    })
}

/// The first offset at or after `from` where a whole valid record starts.
/// A random match needs a length that fits and a 32-bit checksum that
/// matches: about one chance in four billion per position.
fn find_valid_record(bytes: &[u8], from: usize) -> Option<usize> {
    (from..bytes.len().saturating_sub(HEADER_BYTES)).find(|&at| decode_one(&bytes[at..]).is_ok())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn entry(index: u64, term: u64, data: &'static [u8]) -> Record {
        Record::Entry(Entry {
            index,
            term,
            data: Bytes::from_static(data),
        })
    }

    fn sample() -> (Vec<u8>, Vec<Record>, Vec<usize>) {
        let records = vec![
            entry(1, 1, b"first"),
            Record::HardState(HardState {
                term: 1,
                vote: 2,
                commit: 1,
            }),
            entry(2, 1, b""),
            Record::Snapshot(SnapshotMeta { index: 7, term: 2 }),
            entry(8, 2, b"last record"),
        ];
        let mut bytes = Vec::new();
        let mut ends = Vec::new();
        for r in &records {
            encode(r, &mut bytes);
            ends.push(bytes.len());
        }
        (bytes, records, ends)
    }

    #[test]
    fn records_round_trip() {
        let (bytes, records, _) = sample();
        let seg = decode_segment(&bytes).unwrap();
        assert_eq!(
            seg.records.into_iter().map(|(_, r)| r).collect::<Vec<_>>(),
            records
        );
        assert_eq!(seg.valid_len, bytes.len() as u64);
        assert!(seg.torn.is_none());
    }

    #[test]
    fn a_cut_at_every_byte_keeps_exactly_the_complete_records() {
        let (bytes, _, ends) = sample();
        for cut in 0..=bytes.len() {
            let seg =
                decode_segment(&bytes[..cut]).unwrap_or_else(|c| panic!("cut at {cut}: {c:?}"));
            let complete = ends.iter().filter(|&&e| e <= cut).count();
            assert_eq!(seg.records.len(), complete, "cut at {cut}");
            let expected_len = ends
                .iter()
                .copied()
                .filter(|&e| e <= cut)
                .max()
                .unwrap_or(0);
            assert_eq!(seg.valid_len, expected_len as u64, "cut at {cut}");
            assert_eq!(seg.torn.is_some(), cut != expected_len, "cut at {cut}");
        }
    }

    #[test]
    fn a_flipped_bit_anywhere_is_detected() {
        let (bytes, _, ends) = sample();
        let last_start = ends[ends.len() - 2];
        for at in 0..bytes.len() {
            for bit in [0u8, 3, 7] {
                let mut damaged = bytes.clone();
                damaged[at] ^= 1 << bit;
                match decode_segment(&damaged) {
                    // In the last record it reads as a torn tail, cut off.
                    Ok(seg) => {
                        assert!(
                            at >= last_start,
                            "flip at {at} bit {bit} went unnoticed: {seg:?}"
                        );
                        assert_eq!(seg.records.len(), ends.len() - 1);
                    }
                    Err(c) => assert!(
                        c.offset <= at as u64,
                        "flip at {at} reported at {}",
                        c.offset
                    ),
                }
            }
        }
    }

    #[test]
    fn zeroed_tail_is_torn_not_corrupt() {
        let (mut bytes, _, ends) = sample();
        bytes.extend_from_slice(&[0u8; 64]);
        let seg = decode_segment(&bytes).unwrap();
        assert_eq!(seg.records.len(), ends.len());
        assert_eq!(seg.torn, Some(BadRecord::BadLength(0)));
    }
}
