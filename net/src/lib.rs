//! The node runtime: one tokio task owns the sans-IO core and everything
//! reaches it through channels.
