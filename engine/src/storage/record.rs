//! WAL records: framing, checksums, and telling a torn tail from corruption.
//!
//! A record is `[len u32][body crc32 u32][header crc32 u32][type u8][payload]`
//! (little-endian), where `len` counts type and payload, the body checksum
//! covers them, and the header checksum covers the first eight bytes.
//!
//! The header checksum is what tells bit rot in the last record from a
//! write a crash tore. A torn write leaves the file short (it ends inside
//! the header or before `len` bytes of body), or leaves a zeroed sector;
//! then the record was never synced, never acknowledged, and is cut off.
//! A complete record that fails a checksum is damage, even at the very end:
//! without its own checksum, a flipped bit in `len` would make a synced,
//! acknowledged record look incomplete, and it would be cut as torn.

use kv_proto::raft::{Entry, HardState, SnapshotMeta};
use prost::Message as _;

/// Bytes of the record header (length and two checksums).
pub const HEADER_BYTES: usize = 12;
/// The unit a disk writes atomically; a torn write may leave one zeroed.
const SECTOR_BYTES: usize = 512;
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
pub fn encode_record(record: &Record, out: &mut Vec<u8>) {
    match record {
        Record::Entry(e) => encode_entry(e, out),
        Record::HardState(h) => encode_hard_state(h, out),
        Record::Snapshot(m) => encode_snapshot_marker(m, out),
    }
}

/// Appends an entry record (without cloning the entry).
pub fn encode_entry(entry: &Entry, out: &mut Vec<u8>) {
    encode_framed(TYPE_ENTRY, entry, out);
}

/// Appends a hard-state record.
pub fn encode_hard_state(hard_state: &HardState, out: &mut Vec<u8>) {
    encode_framed(TYPE_HARD_STATE, hard_state, out);
}

/// Appends a record saying the log restarts after this snapshot.
pub fn encode_snapshot_marker(meta: &SnapshotMeta, out: &mut Vec<u8>) {
    encode_framed(TYPE_SNAPSHOT, meta, out);
}

fn encode_framed(kind: u8, payload: &impl prost::Message, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_BYTES]);
    out.push(kind);
    // Encoding into a Vec only fails for lack of capacity, which Vec grows.
    let result = payload.encode(out);
    debug_assert!(result.is_ok(), "encoding record type {kind}");
    let body = &out[start + HEADER_BYTES..];
    let len = body.len() as u32;
    let crc = crc32fast::hash(body);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    let header_crc = crc32fast::hash(&out[start..start + 8]);
    out[start + 8..start + 12].copy_from_slice(&header_crc.to_le_bytes());
}

/// Why a record at some offset is not valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadRecord {
    /// Fewer bytes than a header or than the announced length.
    Incomplete,
    /// The header's checksum does not match.
    Header,
    /// A zero or absurd length under a valid header checksum.
    BadLength(u32),
    /// The body's checksum does not match.
    Checksum,
    /// The checksum matches but the payload does not decode.
    Undecodable(String),
}

impl std::fmt::Display for BadRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadRecord::Incomplete => write!(f, "incomplete record"),
            BadRecord::Header => write!(f, "header checksum mismatch"),
            BadRecord::BadLength(l) => write!(f, "bad record length {l}"),
            BadRecord::Checksum => write!(f, "checksum mismatch"),
            BadRecord::Undecodable(e) => write!(f, "undecodable record: {e}"),
        }
    }
}

/// Decodes the record at the start of `bytes`; returns it and its size.
pub fn decode_one(bytes: &[u8]) -> Result<(Record, usize), BadRecord> {
    let Some((header, rest)) = bytes.split_first_chunk::<HEADER_BYTES>() else {
        return Err(BadRecord::Incomplete);
    };
    let word = |at: usize| {
        u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    if crc32fast::hash(&header[..8]) != word(8) {
        return Err(BadRecord::Header);
    }
    let len = word(0);
    if len == 0 || len as usize > MAX_RECORD_BYTES {
        return Err(BadRecord::BadLength(len));
    }
    let end = HEADER_BYTES + len as usize;
    let Some(body) = rest.get(..len as usize) else {
        return Err(BadRecord::Incomplete);
    };
    let crc = word(4);
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
    /// Valid records with their byte offsets, up to the first bad one.
    pub records: Vec<(u64, Record)>,
    /// Bytes holding those records; anything after is torn or damaged.
    pub valid_len: u64,
    /// How the bytes end.
    pub end: SegmentEnd,
}

/// How a segment's bytes end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentEnd {
    /// Every byte belongs to a valid record.
    Clean,
    /// A bad record with nothing valid after it: a write a crash tore
    /// (never acknowledged).
    Torn(BadRecord),
    /// A bad record followed by valid data, or a complete record that
    /// fails a checksum: acknowledged data was damaged.
    Corrupt(Corruption),
}

/// A bad record that no crash can explain: acknowledged data was damaged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corruption {
    /// Offset of the bad record.
    pub offset: u64,
    /// What was wrong with it.
    pub reason: BadRecord,
    /// Offset of a valid record found after it, if any.
    pub valid_after: Option<u64>,
}

/// Decodes a whole segment: the valid records up to the first bad one, and
/// whether that bad one is a torn tail or damage.
pub fn decode_segment(bytes: &[u8]) -> Segment {
    let mut records = Vec::new();
    let mut offset = 0usize;
    while offset < bytes.len() {
        match decode_one(&bytes[offset..]) {
            Ok((record, size)) => {
                records.push((offset as u64, record));
                offset += size;
            }
            Err(reason) => {
                let valid_after = find_valid_record(bytes, offset + 1);
                let end = if valid_after.is_none() && looks_torn(bytes, offset, &reason) {
                    SegmentEnd::Torn(reason)
                } else {
                    SegmentEnd::Corrupt(Corruption {
                        offset: offset as u64,
                        reason,
                        valid_after: valid_after.map(|v| v as u64),
                    })
                };
                return Segment {
                    records,
                    valid_len: offset as u64,
                    end,
                };
            }
        }
    }
    Segment {
        records,
        valid_len: offset as u64,
        end: SegmentEnd::Clean,
    }
}

/// Whether a bad last record at `offset` can be a write a crash tore: the
/// file ends inside it, or everything from some sector boundary on to the
/// end of the file is zeros (sectors a torn write never reached). A zero
/// sector followed by data is not a torn write, nor is a complete record.
fn looks_torn(bytes: &[u8], offset: usize, reason: &BadRecord) -> bool {
    if *reason == BadRecord::Incomplete {
        return true;
    }
    let data_end = bytes.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
    if data_end <= offset {
        return true;
    }
    let zeros_from = data_end.div_ceil(SECTOR_BYTES) * SECTOR_BYTES;
    zeros_from < bytes.len()
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
                ..Default::default()
            }),
            entry(2, 1, b""),
            Record::Snapshot(SnapshotMeta { index: 7, term: 2 }),
            entry(8, 2, b"last record"),
        ];
        let mut bytes = Vec::new();
        let mut ends = Vec::new();
        for r in &records {
            encode_record(r, &mut bytes);
            ends.push(bytes.len());
        }
        (bytes, records, ends)
    }

    #[test]
    fn records_round_trip() {
        let (bytes, records, _) = sample();
        let seg = decode_segment(&bytes);
        assert_eq!(
            seg.records.into_iter().map(|(_, r)| r).collect::<Vec<_>>(),
            records
        );
        assert_eq!(seg.valid_len, bytes.len() as u64);
        assert_eq!(seg.end, SegmentEnd::Clean);
    }

    #[test]
    fn a_cut_at_every_byte_keeps_exactly_the_complete_records() {
        let (bytes, _, ends) = sample();
        for cut in 0..=bytes.len() {
            let seg = decode_segment(&bytes[..cut]);
            assert!(
                !matches!(seg.end, SegmentEnd::Corrupt(_)),
                "cut at {cut}: {seg:?}"
            );
            let complete = ends.iter().filter(|&&e| e <= cut).count();
            assert_eq!(seg.records.len(), complete, "cut at {cut}");
            let expected_len = ends
                .iter()
                .copied()
                .filter(|&e| e <= cut)
                .max()
                .unwrap_or(0);
            assert_eq!(seg.valid_len, expected_len as u64, "cut at {cut}");
            assert_eq!(
                seg.end != SegmentEnd::Clean,
                cut != expected_len,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_flipped_bit_anywhere_is_damage_even_in_the_last_record() {
        let (bytes, _, ends) = sample();
        for at in 0..bytes.len() {
            for bit in 0u8..8 {
                let mut damaged = bytes.clone();
                damaged[at] ^= 1 << bit;
                let seg = decode_segment(&damaged);
                match &seg.end {
                    SegmentEnd::Torn(_) | SegmentEnd::Clean => {
                        panic!("flip at {at} bit {bit} taken for a torn write or missed: {seg:?}")
                    }
                    SegmentEnd::Corrupt(c) => {
                        assert!(
                            c.offset <= at as u64,
                            "flip at {at} reported at {}",
                            c.offset
                        );
                        // The records before the damage are all still there.
                        assert_eq!(seg.valid_len, c.offset);
                        let before = ends.iter().filter(|&&e| e as u64 <= c.offset).count();
                        assert_eq!(seg.records.len(), before, "flip at {at}");
                    }
                }
            }
        }
    }

    /// The sample plus a last record whose value spans several sectors.
    fn with_big_last_record() -> (Vec<u8>, usize, usize) {
        let (mut bytes, _, ends) = sample();
        let records = ends.len();
        let mut big = Vec::new();
        encode_entry(
            &Entry {
                index: 9,
                term: 2,
                data: Bytes::from(vec![7u8; 2000]),
            },
            &mut big,
        );
        bytes.extend_from_slice(&big);
        let sector = ends[records - 1].div_ceil(SECTOR_BYTES) * SECTOR_BYTES + SECTOR_BYTES;
        (bytes, sector, records)
    }

    #[test]
    fn zeros_from_a_sector_to_the_end_of_the_last_record_are_a_torn_write() {
        let (mut bytes, sector, records) = with_big_last_record();
        let end = bytes.len();
        bytes[sector..end].fill(0);
        let seg = decode_segment(&bytes);
        assert!(matches!(seg.end, SegmentEnd::Torn(_)), "{:?}", seg.end);
        assert_eq!(seg.records.len(), records);
    }

    #[test]
    fn a_zero_sector_inside_a_complete_last_record_is_damage() {
        let (mut bytes, sector, _) = with_big_last_record();
        bytes[sector..sector + SECTOR_BYTES].fill(0);
        let seg = decode_segment(&bytes);
        assert!(matches!(seg.end, SegmentEnd::Corrupt(_)), "{:?}", seg.end);
    }

    #[test]
    fn zeroed_tail_is_torn_not_corrupt() {
        let (mut bytes, _, ends) = sample();
        bytes.extend_from_slice(&[0u8; 64]);
        let seg = decode_segment(&bytes);
        assert_eq!(seg.records.len(), ends.len());
        assert_eq!(seg.end, SegmentEnd::Torn(BadRecord::Header));
    }
}
