//! The limits of the client listener and of the text protocol: part of a
//! node's configuration, read by the client protocols.

use std::time::Duration;

/// Limits that keep one client from hurting the node or other clients.
#[derive(Debug, Clone)]
pub struct ClientLimits {
    /// Text protocol sizes (line, key, value).
    pub text: TextLimits,
    /// Connections beyond this are refused with an error.
    pub max_connections: usize,
    /// A connection silent for this long is closed.
    pub idle_timeout: Duration,
    /// A request not answered in this long gets `ERR timeout`.
    pub request_timeout: Duration,
    /// Largest binary frame accepted.
    pub max_frame_bytes: usize,
    /// Binary requests in flight per connection.
    pub max_pipeline: usize,
    /// Bytes all clients together may hold in requests not yet answered
    /// (and in long lines or frames still arriving); past it, connections
    /// stop reading until answers free some (see `budget.rs`).
    pub max_request_bytes: usize,
    /// Bytes of answers queued for one connection; a client that lets more
    /// pile up without reading them is disconnected.
    pub max_answer_bytes: usize,
    /// A connection whose answers make no progress for this long (its
    /// client does not read) is disconnected.
    pub write_timeout: Duration,
    /// The password Redis clients must AUTH with (None: none).
    pub redis_password: Option<String>,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            text: TextLimits::default(),
            max_connections: 1024,
            idle_timeout: Duration::from_secs(300),
            request_timeout: Duration::from_secs(5),
            max_frame_bytes: 2 << 20,
            max_pipeline: 256,
            max_request_bytes: 64 << 20,
            max_answer_bytes: 8 << 20,
            write_timeout: Duration::from_secs(10),
            redis_password: None,
        }
    }
}

/// Size limits of the text protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextLimits {
    /// Longest line accepted (without its newline).
    pub max_line_bytes: usize,
    /// Longest key accepted.
    pub max_key_bytes: usize,
    /// Longest value accepted.
    pub max_value_bytes: usize,
}

impl Default for TextLimits {
    fn default() -> Self {
        TextLimits {
            max_line_bytes: 1 << 20,
            max_key_bytes: 1024,
            max_value_bytes: 512 * 1024,
        }
    }
}
