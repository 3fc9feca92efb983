//! The identity file of a data dir (`meta`): whose data this is.
//!
//! `"KVMETA01"`, cluster id u64, node id u64, format version u32 (all
//! little-endian), then a crc32 of everything before it. Written durably at
//! the first start, checked at every start: a node never runs on another
//! node's or another cluster's data.

/// The format version this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;

const MAGIC: &[u8; 8] = b"KVMETA01";
const BYTES: usize = 8 + 8 + 8 + 4 + 4;

/// Who a data dir belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataDirMeta {
    /// The cluster the data belongs to.
    pub cluster_id: u64,
    /// The member the data belongs to.
    pub node_id: u64,
    /// The storage format version.
    pub format_version: u32,
}

/// Why a meta file could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    /// Not the length of a meta file.
    #[error("meta file has {0} bytes, not {BYTES}")]
    Length(usize),
    /// Not a meta file of this format.
    #[error("bad magic")]
    BadMagic,
    /// The checksum does not match.
    #[error("checksum mismatch")]
    Checksum,
}

impl DataDirMeta {
    /// The identity of member `node_id` of cluster `cluster_id`, in this format.
    pub fn new(cluster_id: u64, node_id: u64) -> Self {
        DataDirMeta {
            cluster_id,
            node_id,
            format_version: FORMAT_VERSION,
        }
    }
}

/// Encodes a meta file's bytes.
pub fn encode_meta_file(meta: &DataDirMeta) -> Vec<u8> {
    let mut out = Vec::with_capacity(BYTES);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&meta.cluster_id.to_le_bytes());
    out.extend_from_slice(&meta.node_id.to_le_bytes());
    out.extend_from_slice(&meta.format_version.to_le_bytes());
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    debug_assert_eq!(out.len(), BYTES);
    out
}

/// Decodes a meta file's bytes.
pub fn decode_meta_file(bytes: &[u8]) -> Result<DataDirMeta, MetaError> {
    let Ok(bytes) = <&[u8; BYTES]>::try_from(bytes) else {
        return Err(MetaError::Length(bytes.len()));
    };
    let (body, crc) = bytes.split_at(BYTES - 4);
    if crc32fast::hash(body).to_le_bytes() != crc {
        return Err(MetaError::Checksum);
    }
    let (magic, rest) = body.split_at(8);
    if magic != MAGIC {
        return Err(MetaError::BadMagic);
    }
    let (cluster, rest) = rest.split_at(8);
    let (node, version) = rest.split_at(8);
    let u64_of = |b: &[u8]| b.try_into().map(u64::from_le_bytes).unwrap_or(0);
    Ok(DataDirMeta {
        cluster_id: u64_of(cluster),
        node_id: u64_of(node),
        format_version: version.try_into().map(u32::from_le_bytes).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let meta = DataDirMeta::new(7, 3);
        assert_eq!(decode_meta_file(&encode_meta_file(&meta)), Ok(meta));
    }

    #[test]
    fn every_truncation_and_every_flipped_bit_is_refused() {
        let bytes = encode_meta_file(&DataDirMeta::new(1, 2));
        for cut in 0..bytes.len() {
            assert!(decode_meta_file(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        for at in 0..bytes.len() {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[at] ^= 1 << bit;
                assert!(decode_meta_file(&damaged).is_err(), "flip at {at}.{bit}");
            }
        }
    }
}
