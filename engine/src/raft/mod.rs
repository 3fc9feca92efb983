//! The Raft consensus core, after the paper's Figure 2.
//!
//! | file | what |
//! |---|---|
//! | `core.rs` | the state machine, its inputs, term rules, `ready()` |
//! | `compaction.rs` | how much log a leader keeps behind a snapshot for its followers |
//! | `display.rs` | a compact text form of messages and Readys, for tests |
//! | `election.rs` | pre-vote, RequestVote, becoming leader |
//! | `replication.rs` | the leader: appends, commit rule, heartbeats, snapshots out |
//! | `follower.rs` | the follower: AppendEntries and InstallSnapshot receivers |
//! | `log.rs` | the in-memory log and its watermarks |
//! | `progress.rs` | per-follower replication state and in-flight window |
//! | `quorum.rs` | majority arithmetic |
//! | `read_index.rs` | linearizable reads (ReadIndex) |
//! | `ready.rs` | the output contract |
//! | `standing.rs` | voter, discovering or recovering: repair after storage damage |
//! | `transfer.rs` | leadership transfer (TimeoutNow) and lease reads |
//! | `validate.rs` | peer input checked and refused, never asserted |

mod compaction;
mod config;
mod core;
mod display;
mod election;
mod follower;
mod log;
mod progress;
mod quorum;
mod read_index;
mod ready;
mod replication;
mod standing;
mod transfer;
mod validate;

pub use self::config::{Config, ConfigError, ReadMode};
pub use self::core::{RaftCore, Restored};
pub use self::display::{EntriesDisplay, EntryDisplay, HardStateDisplay, MsgDisplay};
pub use self::log::RaftLog;
pub use self::ready::{
    ProposeError, Proposed, ReadState, Ready, Role, SnapshotChunkIn, SnapshotChunkOut,
    SnapshotInfo, SoftState,
};
pub use self::standing::{Found, Standing};
pub use self::validate::{Refusal, MAX_SNAPSHOT_CHUNK_BYTES, MAX_TERM_OR_INDEX};
