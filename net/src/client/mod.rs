//! Everything clients talk to: the text and binary protocols and the listener.

pub mod binary;
pub mod budget;
pub mod redis;
pub mod resp;
pub mod retry;
mod scan_cursors;
pub mod server;
pub mod text;

pub use crate::limits::ClientLimits;
