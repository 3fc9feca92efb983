//! Helpers shared by the unit tests of this crate.

use tokio::io::{AsyncRead, ReadBuf};

/// A reader that hands out its data in pieces of at most `step` bytes, to
/// test decoders against reads that split messages anywhere.
pub(crate) struct Pieces(pub Vec<u8>, pub usize);

impl AsyncRead for Pieces {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let n = self.1.min(self.0.len()).min(buf.remaining());
        let piece: Vec<u8> = self.0.drain(..n).collect();
        buf.put_slice(&piece);
        std::task::Poll::Ready(Ok(()))
    }
}

/// Runs a future to completion on a fresh single-threaded runtime.
pub(crate) fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}
