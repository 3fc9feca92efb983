//! Storage formats, pure: WAL records and snapshot files encoded, decoded
//! and replayed from bytes. The runtime (`kv-net`) does the file I/O.
//!
//! WAL record: `[len u32 LE][crc32 u32 LE][type u8][payload]`, where `len`
//! counts type and payload and the CRC (crc32fast) covers them too.

pub mod record;
pub mod replay;
pub mod snapshot_file;
