//! The snapshot file: `"KVSNAP01"`, index u64, term u64, data length u64
//! (all little-endian), the data, then a crc32 of everything before it.

use bytes::Bytes;
use kv_proto::raft::{Snapshot, SnapshotMeta};

const MAGIC: &[u8; 8] = b"KVSNAP01";
const HEADER_BYTES: usize = 8 + 8 + 8 + 8;

/// Why a snapshot file is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotFileError {
    /// Shorter than its header or its announced data.
    #[error("snapshot file truncated ({len} bytes)")]
    Truncated {
        /// Bytes present.
        len: usize,
    },
    /// Not a snapshot file of this format.
    #[error("bad magic")]
    BadMagic,
    /// The checksum does not match.
    #[error("checksum mismatch")]
    Checksum,
}

/// Encodes a snapshot as a file's bytes.
pub fn encode_snapshot_file(snapshot: &Snapshot) -> Vec<u8> {
    let meta = snapshot.meta.unwrap_or_default();
    let mut out = Vec::with_capacity(HEADER_BYTES + snapshot.data.len() + 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&meta.index.to_le_bytes());
    out.extend_from_slice(&meta.term.to_le_bytes());
    out.extend_from_slice(&(snapshot.data.len() as u64).to_le_bytes());
    out.extend_from_slice(&snapshot.data);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes a snapshot file's bytes.
pub fn decode_snapshot_file(bytes: &[u8]) -> Result<Snapshot, SnapshotFileError> {
    let truncated = SnapshotFileError::Truncated { len: bytes.len() };
    if bytes.len() < HEADER_BYTES + 4 {
        return Err(truncated);
    }
    if &bytes[..8] != MAGIC {
        return Err(SnapshotFileError::BadMagic);
    }
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let (index, term, len) = (u64_at(8), u64_at(16), u64_at(24));
    let end = HEADER_BYTES
        .checked_add(usize::try_from(len).map_err(|_| truncated.clone())?)
        .ok_or(truncated.clone())?;
    if bytes.len() != end + 4 {
        return Err(truncated);
    }
    let crc = u32::from_le_bytes([bytes[end], bytes[end + 1], bytes[end + 2], bytes[end + 3]]);
    if crc32fast::hash(&bytes[..end]) != crc {
        return Err(SnapshotFileError::Checksum);
    }
    Ok(Snapshot {
        meta: Some(SnapshotMeta { index, term }),
        data: Bytes::copy_from_slice(&bytes[HEADER_BYTES..end]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        Snapshot {
            meta: Some(SnapshotMeta { index: 42, term: 7 }),
            data: Bytes::from_static(b"state machine bytes"),
        }
    }

    #[test]
    fn round_trips() {
        assert_eq!(
            decode_snapshot_file(&encode_snapshot_file(&sample())).unwrap(),
            sample()
        );
    }

    #[test]
    fn every_truncation_and_every_flipped_byte_is_refused() {
        let bytes = encode_snapshot_file(&sample());
        for cut in 0..bytes.len() {
            assert!(decode_snapshot_file(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x10;
            assert!(decode_snapshot_file(&damaged).is_err(), "flip at {at}");
        }
    }
}
