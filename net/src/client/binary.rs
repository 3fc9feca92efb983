//! The binary client protocol (`proto/proto/client.proto`): after the
//! 4-byte preamble `MAGIC`, length-prefixed protobuf frames both ways.
//! Requests carry ids and are served concurrently, so responses may come
//! back out of order; at most `max_pipeline` are in flight per connection.

use std::sync::Arc;

use bytes::Bytes;
use kv_proto::client::{self as pb, request::Op, response::Result as Res};
use prost::Message as _;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch, Semaphore};

use super::ClientLimits;
use crate::frame::{encode_frame, FrameError, FrameReader};
use crate::node::{ClientOp, ClientReply, FailKind, NodeHandle};

/// The first bytes of a binary connection (a NUL never starts a text request).
pub const MAGIC: [u8; 4] = [0, b'K', b'V', b'B'];

/// Why a request was refused before reaching the node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// No operation set.
    #[error("request {0} has no operation")]
    NoOp(u64),
    /// A key over the limit.
    #[error("key too long ({len} > {max} bytes)")]
    KeyTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A value over the limit.
    #[error("value too long ({len} > {max} bytes)")]
    ValueTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// Turns a request into a node operation (`None` for PING), checking sizes.
pub fn request_to_op(
    req: &pb::Request,
    limits: &ClientLimits,
) -> Result<Option<ClientOp>, RequestError> {
    let key = |k: &Bytes| {
        if k.len() > limits.text.max_key_bytes {
            return Err(RequestError::KeyTooLong {
                len: k.len(),
                max: limits.text.max_key_bytes,
            });
        }
        Ok(k.clone())
    };
    let value = |v: &Bytes| {
        if v.len() > limits.text.max_value_bytes {
            return Err(RequestError::ValueTooLong {
                len: v.len(),
                max: limits.text.max_value_bytes,
            });
        }
        Ok(v.clone())
    };
    Ok(match &req.op {
        None => return Err(RequestError::NoOp(req.id)),
        Some(Op::Ping(_)) => None,
        Some(Op::Get(g)) => Some(ClientOp::Get { key: key(&g.key)? }),
        Some(Op::Set(s)) => Some(ClientOp::Set {
            key: key(&s.key)?,
            value: value(&s.value)?,
        }),
        Some(Op::Del(d)) => Some(ClientOp::Del { key: key(&d.key)? }),
        Some(Op::Cas(c)) => Some(ClientOp::Cas {
            key: key(&c.key)?,
            expected: value(&c.expected)?,
            new: value(&c.new)?,
        }),
        Some(Op::Mset(m)) => Some(ClientOp::MSet {
            pairs: m
                .pairs
                .iter()
                .map(|p| Ok((key(&p.key)?, value(&p.value)?)))
                .collect::<Result<_, _>>()?,
        }),
    })
}

fn error(id: u64, kind: pb::error::Kind, message: impl Into<String>) -> pb::Response {
    pb::Response {
        id,
        result: Some(Res::Error(pb::Error {
            kind: kind as i32,
            message: message.into(),
        })),
    }
}

/// What a node whose disk failed says (in both protocols).
pub const UNAVAILABLE_MESSAGE: &str = "unavailable: this node's disk failed; retry on another node";

/// The binary rendering of a node's reply.
pub fn reply_to_response(id: u64, reply: ClientReply) -> pb::Response {
    use pb::error::Kind;
    let result = match reply {
        ClientReply::Ok => Res::Ok(pb::Ok {}),
        ClientReply::Value(value) => Res::Value(pb::Value { value }),
        ClientReply::NotFound => Res::NotFound(pb::NotFound {}),
        ClientReply::CasFailed(current) => Res::CasFailed(pb::CasFailed { current }),
        ClientReply::Redirect(addr) => Res::Redirect(pb::Redirect {
            leader: addr.to_string(),
        }),
        ClientReply::NoLeader => return error(id, Kind::NoLeader, "no leader"),
        ClientReply::Failed(kind) => {
            let (k, msg) = match kind {
                FailKind::NotApplied => (
                    Kind::NotApplied,
                    "not applied: leader changed, safe to retry",
                ),
                FailKind::Unknown => (Kind::Unknown, "outcome unknown: leadership lost"),
                FailKind::Overloaded => (Kind::Overloaded, "overloaded, retry later"),
                FailKind::Timeout => (Kind::Unknown, "timeout: outcome unknown"),
                FailKind::ShuttingDown => (Kind::Unknown, "shutting down: outcome unknown"),
                FailKind::Unavailable => (Kind::Unavailable, UNAVAILABLE_MESSAGE),
            };
            return error(id, k, msg);
        }
    };
    pb::Response {
        id,
        result: Some(result),
    }
}

/// Serves one binary connection (after its preamble) until EOF, a broken
/// frame, an idle timeout, a write error or shutdown.
pub async fn serve_binary<R, W>(
    reader: R,
    mut writer: W,
    limits: &ClientLimits,
    node: &NodeHandle,
    mut shutdown: watch::Receiver<bool>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut frames = FrameReader::new(reader, limits.max_frame_bytes);
    let (responses, mut outbox) = mpsc::channel::<pb::Response>(limits.max_pipeline.max(1));
    let slots = Arc::new(Semaphore::new(limits.max_pipeline.max(1)));
    let read_side = async move {
        loop {
            let next = tokio::select! {
                biased;
                _ = shutdown.changed() => return,
                f = tokio::time::timeout(limits.idle_timeout, frames.next_frame()) => f,
            };
            let payload = match next {
                Err(_) => return, // idle
                Ok(Ok(Some(p))) => p,
                Ok(Ok(None)) => return,
                Ok(Err(FrameError::TooLarge { len, max })) => {
                    let msg = format!("frame of {len} bytes exceeds the limit of {max}");
                    let _ = responses
                        .send(error(0, pb::error::Kind::BadRequest, msg))
                        .await;
                    return;
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "binary client read failed");
                    return;
                }
            };
            let req = match pb::Request::decode(payload) {
                Ok(r) => r,
                Err(e) => {
                    // Framing is intact, so the connection stays usable.
                    let msg = format!("undecodable request: {e}");
                    if responses
                        .send(error(0, pb::error::Kind::BadRequest, msg))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    continue;
                }
            };
            let op = match request_to_op(&req, limits) {
                Ok(Some(op)) => op,
                Ok(None) => {
                    if responses
                        .send(pb::Response {
                            id: req.id,
                            result: Some(Res::Pong(pb::Pong {})),
                        })
                        .await
                        .is_err()
                    {
                        return;
                    }
                    continue;
                }
                Err(e) => {
                    if responses
                        .send(error(req.id, pb::error::Kind::BadRequest, e.to_string()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    continue;
                }
            };
            // Bounded pipelining: wait for a slot before taking more.
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let node = node.clone();
            let responses = responses.clone();
            let timeout = limits.request_timeout;
            tokio::spawn(async move {
                let reply = match tokio::time::timeout(timeout, node.call(op)).await {
                    Ok(r) => r,
                    Err(_) => ClientReply::Failed(FailKind::Timeout),
                };
                let _ = responses.send(reply_to_response(req.id, reply)).await;
                drop(slot);
            });
        }
    };
    let write_side = async move {
        let mut buf = Vec::with_capacity(64 * 1024);
        while let Some(first) = outbox.recv().await {
            buf.clear();
            encode_frame(&first, &mut buf);
            while let Ok(more) = outbox.try_recv() {
                encode_frame(&more, &mut buf);
            }
            if writer.write_all(&buf).await.is_err() || writer.flush().await.is_err() {
                return;
            }
        }
    };
    tokio::join!(read_side, write_side);
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn limits() -> ClientLimits {
        let mut l = ClientLimits::default();
        l.text.max_key_bytes = 4;
        l.text.max_value_bytes = 8;
        l
    }

    fn req(id: u64, op: Op) -> pb::Request {
        pb::Request { id, op: Some(op) }
    }

    #[test]
    fn requests_map_to_operations_and_sizes_are_checked() {
        let b = |s: &str| Bytes::copy_from_slice(s.as_bytes());
        let l = limits();
        assert_eq!(
            request_to_op(
                &req(
                    1,
                    Op::Set(pb::Set {
                        key: b("k"),
                        value: b("v\n with spaces")
                    })
                ),
                &l
            ),
            Err(RequestError::ValueTooLong { len: 14, max: 8 })
        );
        assert_eq!(
            request_to_op(
                &req(
                    1,
                    Op::Set(pb::Set {
                        key: b("k\0"),
                        value: b("v v")
                    })
                ),
                &l
            ),
            Ok(Some(ClientOp::Set {
                key: b("k\0"),
                value: b("v v")
            })),
            "any bytes are fine in the binary protocol"
        );
        assert_eq!(request_to_op(&req(2, Op::Ping(pb::Ping {})), &l), Ok(None));
        assert_eq!(
            request_to_op(&pb::Request { id: 3, op: None }, &l),
            Err(RequestError::NoOp(3))
        );
        assert_eq!(
            request_to_op(&req(4, Op::Get(pb::Get { key: b("toolong") })), &l),
            Err(RequestError::KeyTooLong { len: 7, max: 4 })
        );
    }

    #[test]
    fn every_reply_round_trips_through_a_frame() {
        let addr: SocketAddr = "127.0.0.1:7002".parse().unwrap();
        let replies = [
            ClientReply::Ok,
            ClientReply::Value(Bytes::from_static(b"\x00\xff")),
            ClientReply::NotFound,
            ClientReply::CasFailed(None),
            ClientReply::CasFailed(Some(Bytes::new())),
            ClientReply::Redirect(addr),
            ClientReply::NoLeader,
            ClientReply::Failed(FailKind::Unknown),
        ];
        for (i, reply) in replies.into_iter().enumerate() {
            let resp = reply_to_response(i as u64, reply);
            let mut wire = Vec::new();
            encode_frame(&resp, &mut wire);
            let decoded = pb::Response::decode(&wire[4..]).unwrap();
            assert_eq!(decoded, resp);
            assert_eq!(decoded.id, i as u64);
        }
        // An absent current value and an empty one stay distinct.
        let none = reply_to_response(0, ClientReply::CasFailed(None));
        let empty = reply_to_response(0, ClientReply::CasFailed(Some(Bytes::new())));
        assert_ne!(none.encode_to_vec(), empty.encode_to_vec());
    }
}
