//! Shared pieces of the `kv-server` and `kv-cli` binaries.

pub mod check;
pub mod client;
pub mod dev_certs;
pub mod logging;
pub mod members;
pub mod status;
