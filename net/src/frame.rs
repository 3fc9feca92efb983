//! Length-prefixed frames: a big-endian u32 length, then that many bytes
//! (a prost-encoded message). Used on peer connections and by the binary
//! client protocol.

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::client::budget::{Charge, ConnectionBudget};

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The announced length is over the limit; the stream cannot be trusted.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The stream ended inside a frame.
    #[error("connection closed inside a frame")]
    Truncated,
    /// A read failed.
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Appends `msg` as one frame to `out`.
pub fn encode_frame(msg: &impl prost::Message, out: &mut Vec<u8>) {
    let len = msg.encoded_len();
    out.reserve(4 + len);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    // Encoding into a Vec with enough room cannot fail.
    let _ = msg.encode(out);
}

/// Most bytes a frame reader asks the socket for at once.
pub const READ_AHEAD: usize = 64 * 1024;

/// Reads frames from a stream with a reusable buffer.
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    max: usize,
    /// Each frame is charged to this budget before its body is read.
    budget: Option<ConnectionBudget>,
    /// The charge for the frame being read.
    held: Charge,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader refusing frames over `max` bytes.
    pub fn new(inner: R, max: usize) -> Self {
        FrameReader {
            inner,
            buf: BytesMut::with_capacity(16 * 1024),
            max,
            budget: None,
            held: Charge::none(),
        }
    }

    /// As `new`, charging every frame to `budget` from the moment its
    /// header arrives (`next_charged_frame` hands the charge on).
    pub fn with_budget(inner: R, max: usize, budget: ConnectionBudget) -> Self {
        FrameReader {
            budget: Some(budget),
            ..Self::new(inner, max)
        }
    }

    /// Changes the largest frame accepted from here on (a peer's hello is
    /// held to a few bytes, what a member sends afterwards to more).
    pub fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    /// The stream, for reading what is left (draining before a close).
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// The next frame's payload; `None` at a clean end of stream.
    pub async fn next_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        Ok(self.next_charged_frame().await?.map(|(payload, _)| payload))
    }

    /// The next frame's payload and what it is charged against the budget
    /// (nothing without one); `None` at a clean end of stream. Cancel-safe.
    pub async fn next_charged_frame(&mut self) -> Result<Option<(Bytes, Charge)>, FrameError> {
        loop {
            if self.buf.len() >= 4 {
                let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])
                    as usize;
                if len > self.max {
                    return Err(FrameError::TooLarge { len, max: self.max });
                }
                if let Some(budget) = self.budget.as_ref().filter(|_| self.held.bytes() == 0) {
                    self.held = budget.charge(4 + len).await;
                }
                if self.buf.len() >= 4 + len {
                    let mut frame = self.buf.split_to(4 + len);
                    let payload = frame.split_off(4);
                    if len > READ_AHEAD {
                        // What is left shares the large frame's allocation
                        // and would keep all of it alive after the frame is
                        // done (uncharged): move it to a buffer of its own.
                        self.buf = BytesMut::from(&self.buf[..]);
                    }
                    let charge = std::mem::replace(&mut self.held, Charge::none());
                    return Ok(Some((payload.freeze(), charge)));
                }
                // Room for what is still missing, but at most a read's worth
                // at a time: memory follows the bytes that arrive, not the
                // length a peer announces.
                self.buf.reserve((4 + len - self.buf.len()).min(READ_AHEAD));
            } else {
                self.buf.reserve(4096);
            }
            // Never more than a read's worth at once, whatever capacity the
            // buffer grew to: at most READ_AHEAD bytes past the frame being
            // read are ever held before they are charged.
            let n = self
                .inner
                .read_buf(&mut (&mut self.buf).limit(READ_AHEAD))
                .await?;
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(FrameError::Truncated)
                };
            }
        }
    }

    /// True if a whole frame is already buffered.
    pub fn has_buffered_frame(&self) -> bool {
        self.buf.len() >= 4 && {
            let len =
                u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
            self.buf.len() >= 4 + len
        }
    }
}

#[cfg(test)]
mod tests {
    use kv_proto::raft::{Entry, HardState};
    use prost::Message as _;

    use super::*;
    use crate::test_util::{block_on, Pieces};

    #[test]
    fn frames_round_trip_even_when_read_byte_by_byte() {
        let mut wire = Vec::new();
        let a = HardState {
            term: 3,
            vote: 2,
            commit: 9,
            ..Default::default()
        };
        let b = Entry {
            term: 1,
            index: 2,
            data: Bytes::from_static(b"hello"),
        };
        encode_frame(&a, &mut wire);
        encode_frame(&b, &mut wire);
        encode_frame(&HardState::default(), &mut wire); // an empty payload
        block_on(async {
            let reader = Pieces(wire, 1);
            let mut r = FrameReader::new(reader, 1024);
            assert_eq!(
                HardState::decode(r.next_frame().await.unwrap().unwrap()).unwrap(),
                a
            );
            assert_eq!(
                Entry::decode(r.next_frame().await.unwrap().unwrap()).unwrap(),
                b
            );
            assert_eq!(r.next_frame().await.unwrap().unwrap().len(), 0);
            assert!(r.next_frame().await.unwrap().is_none());
        });
    }

    #[test]
    fn oversize_and_truncated_frames_are_errors() {
        block_on(async {
            let mut wire = Vec::new();
            wire.extend_from_slice(&2000u32.to_be_bytes());
            let mut r = FrameReader::new(Pieces(wire, 64), 1024);
            assert!(matches!(
                r.next_frame().await,
                Err(FrameError::TooLarge {
                    len: 2000,
                    max: 1024
                })
            ));
            let mut wire = Vec::new();
            encode_frame(
                &HardState {
                    term: 1,
                    vote: 1,
                    commit: 1,
                    ..Default::default()
                },
                &mut wire,
            );
            wire.pop();
            let mut r = FrameReader::new(Pieces(wire, 64), 1024);
            assert!(matches!(r.next_frame().await, Err(FrameError::Truncated)));
            let mut r = FrameReader::new(Pieces(vec![0, 0], 64), 1024);
            assert!(matches!(r.next_frame().await, Err(FrameError::Truncated)));
        });
    }

    #[test]
    fn memory_follows_the_bytes_that_arrive_not_the_announced_length() {
        block_on(async {
            // A peer announces 100 MiB and sends 200 bytes, then stalls.
            let mut wire = (100u32 << 20).to_be_bytes().to_vec();
            wire.extend_from_slice(&[7; 200]);
            let mut r = FrameReader::new(Pieces(wire, 64), 128 << 20);
            assert!(matches!(r.next_frame().await, Err(FrameError::Truncated)));
            assert!(r.buf.capacity() <= 4 * READ_AHEAD, "{}", r.buf.capacity());
        });
    }

    proptest::proptest! {
        /// Arbitrary bytes never panic the reader or the peer decoders.
        #[test]
        fn arbitrary_bytes_are_frames_or_errors(wire in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), piece in 1usize..64) {
            use kv_proto::raft::{Envelope, Hello};
            block_on(async {
                let mut r = FrameReader::new(Pieces(wire, piece), 256);
                while let Ok(Some(frame)) = r.next_frame().await {
                    let _ = Hello::decode(frame.clone());
                    let _ = Envelope::decode(frame);
                }
            });
        }
    }
}
