//! Shared pieces of the `kv-server` and `kv-cli` binaries.

pub mod logging;
pub mod members;
