//! Protobuf types shared by every part of the store: peer RPC (`raft`), the
//! commands stored in log entries (`command`), the binary client protocol (`client`).
//!
//! The `.proto` files in `proto/proto/` are the source of truth; this crate
//! only includes what `build.rs` generates from them.

/// Peer RPC, log entries, hard state and snapshots.
#[allow(missing_docs, clippy::all)]
pub mod raft {
    include!(concat!(env!("OUT_DIR"), "/kv.raft.rs"));
}

/// Commands of the key-value state machine.
#[allow(missing_docs, clippy::module_inception)]
pub mod command {
    include!(concat!(env!("OUT_DIR"), "/kv.command.rs"));
}

/// The binary client protocol.
#[allow(missing_docs, clippy::all)]
pub mod client {
    include!(concat!(env!("OUT_DIR"), "/kv.client.rs"));
}

pub use prost;
pub use prost::bytes;
