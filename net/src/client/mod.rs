//! Everything clients talk to: the text and binary protocols and the listener.

pub mod binary;
pub mod server;
pub mod text;

use std::time::Duration;

use self::text::TextLimits;

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
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            text: TextLimits::default(),
            max_connections: 1024,
            idle_timeout: Duration::from_secs(300),
            request_timeout: Duration::from_secs(5),
            max_frame_bytes: 2 << 20,
            max_pipeline: 1024,
        }
    }
}
