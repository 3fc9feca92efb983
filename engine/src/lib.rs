//! The sans-IO core of the store.
//!
//! Nothing here does I/O, reads a clock, spawns a thread or draws global
//! randomness: the same configuration, seed and inputs give the same outputs.
//! The runtime in `kv-net` (or the simulation in `kv-sim`) drives it.

pub mod kv;
pub mod raft;
pub mod storage;
