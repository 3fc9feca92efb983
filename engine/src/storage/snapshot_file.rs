//! The snapshot file, written and read as a stream:
//!
//! ```text
//! "KVSNAP02" | index u64 | term u64 | data ... | data length u64 | crc32 u32
//! ```
//!
//! (little-endian; the checksum covers everything before it). The data is
//! the state machine's snapshot encoding; followers receive it in chunks of
//! data, never the file's framing, and frame it again as they write it.

use kv_proto::raft::SnapshotMeta;

const MAGIC: &[u8; 8] = b"KVSNAP02";
/// Bytes before the data.
pub const HEADER_BYTES: u64 = 24;
/// Bytes after the data.
pub const TRAILER_BYTES: u64 = 12;

/// Why a snapshot file is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotFileError {
    /// Shorter than its framing, or its data length disagrees with its size.
    #[error("snapshot file truncated or mis-sized ({len} bytes)")]
    Truncated {
        /// Bytes present.
        len: u64,
    },
    /// Not a snapshot file of this format.
    #[error("bad magic")]
    BadMagic,
    /// The checksum does not match.
    #[error("checksum mismatch")]
    Checksum,
}

/// Writes a snapshot file as a stream: `header`, then `data` pieces, then
/// `trailer`, with the checksum kept as it goes.
#[derive(Debug)]
pub struct SnapshotFileWriter {
    hasher: crc32fast::Hasher,
    data_len: u64,
}

impl SnapshotFileWriter {
    /// Starts a file for `meta`; returns the writer and the header bytes.
    pub fn start(meta: SnapshotMeta) -> (Self, Vec<u8>) {
        let mut header = Vec::with_capacity(HEADER_BYTES as usize);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&meta.index.to_le_bytes());
        header.extend_from_slice(&meta.term.to_le_bytes());
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&header);
        (
            SnapshotFileWriter {
                hasher,
                data_len: 0,
            },
            header,
        )
    }

    /// Accounts for the next piece of data (the caller writes it).
    pub fn data(&mut self, piece: &[u8]) {
        self.hasher.update(piece);
        self.data_len += piece.len() as u64;
    }

    /// Bytes of data so far.
    pub fn data_len(&self) -> u64 {
        self.data_len
    }

    /// The trailer that ends the file.
    pub fn trailer(mut self) -> Vec<u8> {
        let mut out = self.data_len.to_le_bytes().to_vec();
        self.hasher.update(&out);
        out.extend_from_slice(&self.hasher.finalize().to_le_bytes());
        out
    }
}

/// The data bytes of a file of `file_len` bytes, once its framing checks out.
pub fn data_len_of(file_len: u64) -> Result<u64, SnapshotFileError> {
    file_len
        .checked_sub(HEADER_BYTES + TRAILER_BYTES)
        .ok_or(SnapshotFileError::Truncated { len: file_len })
}

/// Why reading a snapshot file stream failed.
#[derive(Debug)]
pub enum SnapshotReadError<E> {
    /// Reading the bytes failed.
    Io(E),
    /// The file is not valid.
    File(SnapshotFileError),
    /// The data consumer refused the data.
    Data(String),
}

/// Reads a snapshot file of `file_len` bytes through `read(offset, len)` in
/// pieces of at most `piece` bytes, hands its data to `on_data` in order,
/// and checks the framing and the checksum. The data is only good if this
/// returns Ok: a consumer must not trust what it built before then.
pub fn stream_snapshot_file<E>(
    file_len: u64,
    piece: usize,
    mut read: impl FnMut(u64, usize) -> Result<Vec<u8>, E>,
    mut on_data: impl FnMut(&[u8]) -> Result<(), String>,
) -> Result<SnapshotMeta, SnapshotReadError<E>> {
    let data_len = data_len_of(file_len).map_err(SnapshotReadError::File)?;
    let header = read(0, HEADER_BYTES as usize).map_err(SnapshotReadError::Io)?;
    let meta = decode_header(&header).map_err(SnapshotReadError::File)?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header);
    let mut at = HEADER_BYTES;
    while at < HEADER_BYTES + data_len {
        let want = (HEADER_BYTES + data_len - at).min(piece.max(1) as u64) as usize;
        let bytes = read(at, want).map_err(SnapshotReadError::Io)?;
        if bytes.len() != want {
            return Err(SnapshotReadError::File(SnapshotFileError::Truncated {
                len: at,
            }));
        }
        hasher.update(&bytes);
        on_data(&bytes).map_err(SnapshotReadError::Data)?;
        at += want as u64;
    }
    let trailer = read(at, TRAILER_BYTES as usize).map_err(SnapshotReadError::Io)?;
    let (len, crc) = trailer
        .split_first_chunk::<8>()
        .ok_or(SnapshotReadError::File(SnapshotFileError::Truncated {
            len: file_len,
        }))?;
    if u64::from_le_bytes(*len) != data_len {
        return Err(SnapshotReadError::File(SnapshotFileError::Truncated {
            len: file_len,
        }));
    }
    hasher.update(len);
    if crc != hasher.finalize().to_le_bytes() {
        return Err(SnapshotReadError::File(SnapshotFileError::Checksum));
    }
    Ok(meta)
}

fn decode_header(header: &[u8]) -> Result<SnapshotMeta, SnapshotFileError> {
    let Some((magic, rest)) = header.split_first_chunk::<8>() else {
        return Err(SnapshotFileError::Truncated {
            len: header.len() as u64,
        });
    };
    if magic != MAGIC {
        return Err(SnapshotFileError::BadMagic);
    }
    let word = |b: &[u8]| b.first_chunk::<8>().map(|w| u64::from_le_bytes(*w));
    match (word(rest), rest.get(8..).and_then(word)) {
        (Some(index), Some(term)) => Ok(SnapshotMeta { index, term }),
        _ => Err(SnapshotFileError::Truncated {
            len: header.len() as u64,
        }),
    }
}

/// A whole snapshot file's bytes at once (small snapshots and tests).
pub fn encode_snapshot_file(meta: SnapshotMeta, data: &[u8]) -> Vec<u8> {
    let (mut writer, mut out) = SnapshotFileWriter::start(meta);
    writer.data(data);
    out.extend_from_slice(data);
    out.extend_from_slice(&writer.trailer());
    out
}

/// Decodes a whole snapshot file's bytes: its meta and its data.
pub fn decode_snapshot_file(bytes: &[u8]) -> Result<(SnapshotMeta, Vec<u8>), SnapshotFileError> {
    let mut data = Vec::new();
    let read = |at: u64, len: usize| -> Result<Vec<u8>, ()> {
        let at = at as usize;
        Ok(bytes.get(at..at + len).unwrap_or_default().to_vec())
    };
    let on_data = |piece: &[u8]| {
        data.extend_from_slice(piece);
        Ok(())
    };
    match stream_snapshot_file(bytes.len() as u64, 1 << 20, read, on_data) {
        Ok(meta) => Ok((meta, data)),
        Err(SnapshotReadError::File(e)) => Err(e),
        Err(_) => Err(SnapshotFileError::Truncated {
            len: bytes.len() as u64,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const META: SnapshotMeta = SnapshotMeta { index: 42, term: 7 };

    #[test]
    fn round_trips() {
        let bytes = encode_snapshot_file(META, b"state machine bytes");
        assert_eq!(
            decode_snapshot_file(&bytes).unwrap(),
            (META, b"state machine bytes".to_vec())
        );
        assert_eq!(data_len_of(bytes.len() as u64), Ok(19));
    }

    #[test]
    fn streamed_in_any_piece_size_it_gives_the_same_data() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        let bytes = encode_snapshot_file(META, &data);
        for piece in [1, 3, 64, 4999, 1 << 20] {
            let mut seen = Vec::new();
            let meta = stream_snapshot_file(
                bytes.len() as u64,
                piece,
                |at, len| -> Result<Vec<u8>, ()> {
                    Ok(bytes[at as usize..at as usize + len].to_vec())
                },
                |p| {
                    assert!(p.len() <= piece);
                    seen.extend_from_slice(p);
                    Ok(())
                },
            )
            .unwrap();
            assert_eq!((meta, &seen), (META, &data), "piece {piece}");
        }
    }

    #[test]
    fn every_truncation_and_every_flipped_byte_is_refused() {
        let bytes = encode_snapshot_file(META, b"state machine bytes");
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
