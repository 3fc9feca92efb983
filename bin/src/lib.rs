//! Shared pieces of the `kv-server` and `kv-cli` binaries.
