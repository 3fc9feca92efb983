//! Storage formats and recovery policy, pure: WAL records, snapshot files
//! and the identity file encoded, decoded and replayed from bytes, what to
//! make of a data dir at start (`recovery`), and group commit (`batch`). The runtime (`kv-net`) does
//! the file I/O.
//!
//! WAL record: `[len u32 LE][crc32 u32 LE][type u8][payload]`, where `len`
//! counts type and payload and the CRC (crc32fast) covers them too.

pub mod batch;
pub mod meta;
pub mod record;
pub mod recovery;
pub mod replay;
pub mod snapshot_file;
