//! One node of the store: the Raft core owned by a single task, its storage
//! and its snapshots. `crate::server` starts it with its listeners;
//! clients reach it through `crate::api`.
//!
//! The rules this module keeps (DESIGN.md, "The runtime's rules"):
//! 1. one task owns the core; everything reaches it through bounded channels;
//! 2. durable before visible: a Ready's writes are fsynced before its
//!    `persisted_messages` leave and before any write is acknowledged;
//! 3. a write is acknowledged only once committed and applied; a proposal
//!    that cannot complete is answered with an error saying whether a retry
//!    is safe;
//! 4. one Ready becomes one write and one fsync (several queued Readies are
//!    merged into one: group commit);
//! 5. every queue is bounded.

mod config;
mod core_task;
pub mod events;
pub mod sim_disk;
mod snapshot_task;
mod storage_task;
pub(crate) mod supervisor;

use std::net::SocketAddr;

pub use self::config::{Member, NodeConfig};

/// Why a node could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Storage failed to open, or a write failed (the node stops rather
    /// than run on a disk it cannot trust).
    #[error("storage: {0}")]
    Storage(#[from] crate::storage::StorageError),
    /// The peer transport could not start.
    #[error("peer transport: {0}")]
    Transport(#[from] crate::transport::TransportError),
    /// The client listener could not start.
    #[error("client listener on {addr}: {source}")]
    Listen {
        /// The address it tried.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}
