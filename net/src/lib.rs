//! The node runtime: one tokio task owns the sans-IO core and everything
//! reaches it through channels.
//!
//! | module | what |
//! |---|---|
//! | `server` | a running server: the node started with its listeners |
//! | `node` | the node: core task, storage task, snapshot task, supervisor |
//! | `api` | what clients ask of a node and what it answers |
//! | `client` | the client protocols (text, binary, Redis) and their listener |
//! | `limits` | the limits of the client listener and the text protocol |
//! | `status` | the node's status board (STATUS, `/status`, metrics) |
//! | `transport` | peer connections (framed protobuf), fault injection |
//! | `frame` | length-prefixed frames |
//! | `peer_inbox` | the queue from peer connections to the core, bounded in bytes |
//! | `peer_wire` | a peer frame's entries counted before it is decoded |
//! | `storage` | WAL segments, recovery, the data dir's identity and lock |
//! | `snapshots` | snapshot files, streamed: written, sent, received, restored |
//! | `fs` | the file-system trait, real and in-memory |
//! | `log_limit` | rate limits for warnings outsiders can trigger |
//! | `tls` | mutual TLS for the peer and client ports (real sockets only) |

pub mod api;
pub mod client;
pub mod frame;
pub mod fs;
pub mod http;
pub mod limits;
pub mod log_limit;
pub mod metrics;
pub mod node;
pub mod peer_inbox;
pub mod peer_wire;
pub mod server;
pub mod snapshots;
pub mod status;
pub mod storage;
#[cfg(not(madsim))]
pub mod tls;
pub mod transport;

#[cfg(test)]
mod test_util;
