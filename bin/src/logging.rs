//! Logging setup for the binaries: tracing to stderr, level from `RUST_LOG`.

use tracing_subscriber::EnvFilter;

/// Installs a stderr subscriber; `RUST_LOG` sets the level (default `info`).
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
