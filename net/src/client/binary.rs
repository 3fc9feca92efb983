//! The binary client protocol (`proto/proto/client.proto`): after the
//! 4-byte preamble `MAGIC`, length-prefixed protobuf frames both ways.
//! Requests carry ids and are served concurrently, so responses may come
//! back out of order; at most `max_pipeline` are in flight per connection.
//!
//! Each connection has two halves and no task per request: the reader
//! hands each request to the node as it reads it, and the writer awaits
//! the node's answers (in whatever order they come) and writes those ready
//! together in one go.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt as _, StreamExt as _};
use kv_proto::client::{self as pb, request::Op, response::Result as Res};
use prost::Message as _;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::budget::{Charge, ConnectionBudget};
use super::ClientLimits;
use crate::api::{
    ClientOp, ClientReply, FailKind, NodeHandle, SessionTag, Submitted, MAX_MSET_PAIRS,
};
use crate::frame::{encode_frame, FrameError, FrameReader};

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
    /// An MSET of more pairs than `MAX_MSET_PAIRS`.
    #[error("MSET of more than {max} pairs")]
    TooManyPairs {
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
        Some(Op::Mset(m)) if m.pairs.len() > MAX_MSET_PAIRS => {
            return Err(RequestError::TooManyPairs {
                max: MAX_MSET_PAIRS,
            })
        }
        Some(Op::Mset(m)) => Some(ClientOp::MSet {
            pairs: m
                .pairs
                .iter()
                .map(|p| Ok((key(&p.key)?, value(&p.value)?)))
                .collect::<Result<_, _>>()?,
        }),
        Some(Op::Status(_)) => Some(ClientOp::Status),
        Some(Op::OpenSession(_)) => Some(ClientOp::OpenSession),
        Some(Op::Incr(i)) => Some(ClientOp::Incr {
            key: key(&i.key)?,
            by: i.by,
        }),
        Some(Op::TransferLeader(t)) => Some(ClientOp::TransferLeader { to: t.to }),
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
            let k = match kind {
                FailKind::NotApplied => Kind::NotApplied,
                FailKind::Overloaded => Kind::Overloaded,
                FailKind::Unavailable => Kind::Unavailable,
                FailKind::Unknown | FailKind::Timeout | FailKind::ShuttingDown => Kind::Unknown,
            };
            return error(id, k, kind.message());
        }
        ClientReply::Status(status) => Res::Status(status.to_proto()),
        ClientReply::Refused(why) => return error(id, Kind::Refused, why),
        ClientReply::Int(value) => Res::Int(pb::Int { value }),
        ClientReply::Session(id) => Res::Session(pb::SessionOpened { id }),
        ClientReply::Old(Some(value)) => Res::Value(pb::Value { value }),
        ClientReply::Old(None) => Res::NotFound(pb::NotFound {}),
        ClientReply::NotSet
        | ClientReply::Values(_)
        | ClientReply::Page { .. }
        | ClientReply::Keys(_) => {
            return error(id, Kind::BadRequest, "no binary form for this answer")
        }
    };
    pb::Response {
        id,
        result: Some(result),
    }
}

/// Serves one binary connection (after its preamble) until EOF, a broken
/// frame, an idle timeout, a client that does not read its answers (over
/// `max_answer_bytes` queued, or no write progress for `write_timeout`), a
/// write error or shutdown. Every request is charged to `budget` from its
/// first byte until it is answered.
pub async fn serve_binary<R, W>(
    reader: R,
    writer: W,
    limits: &ClientLimits,
    node: &NodeHandle,
    budget: &ConnectionBudget,
    shutdown: watch::Receiver<bool>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let frames = FrameReader::with_budget(reader, limits.max_frame_bytes, budget.clone());
    let (answers, outbox) = mpsc::unbounded_channel::<Outgoing>();
    let queue = Arc::new(AnswerQueue::new(limits.max_answer_bytes));
    let reading = read_requests(frames, limits, node, answers, queue.clone(), shutdown);
    let writing = write_answers(writer, outbox, queue.clone(), limits.write_timeout);
    let stopped = tokio::select! {
        (stopped, ()) = async { tokio::join!(reading, writing) } => stopped,
        _ = queue.closing.notified() => None,
    };
    if let Some(frames) = stopped {
        // The client reads our GOAWAY only if closing does not reset the
        // connection over requests it sent meanwhile: read them (unread).
        super::server::drain(&mut frames.into_inner()).await;
    }
}

/// The last frame on a connection closed because the node stops: id 0,
/// kind UNAVAILABLE. Every request read before it was answered before it;
/// none sent after was read, so the client may send those again elsewhere.
pub const GOAWAY_MESSAGE: &str =
    "shutting down: every request not answered on this connection was not read; send it again elsewhere";

/// What the reader hands the writer, in the order it read the requests.
enum Outgoing {
    /// An answer given without the node (a PONG, a refusal).
    Answer(Answer),
    /// A request the node has; the writer awaits its answer.
    Call(Call),
}

/// An answer on its way out, with the pipeline slot its request holds
/// until it is written.
struct Answer {
    response: pb::Response,
    bytes: usize,
    _slot: Option<OwnedSemaphorePermit>,
}

/// Answers queued for one connection, counted in bytes.
struct AnswerQueue {
    queued: AtomicUsize,
    max: usize,
    /// Fired when the connection must close (its client does not read).
    closing: Notify,
}

impl AnswerQueue {
    fn new(max: usize) -> Self {
        AnswerQueue {
            queued: AtomicUsize::new(0),
            max,
            closing: Notify::new(),
        }
    }

    /// Counts `bytes` more queued; false (and the connection closes) if
    /// that is over the limit.
    fn add(&self, bytes: usize) -> bool {
        let before = self.queued.fetch_add(bytes, Ordering::Relaxed);
        if before > 0 && before + bytes > self.max {
            self.closing.notify_one();
            return false;
        }
        true
    }

    fn remove(&self, bytes: usize) {
        self.queued.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// Reads, checks and hands requests to the node, at most `max_pipeline`
/// at a time; PINGs and refusals are answered here.
/// Returns the reader if it stopped because the node stops, after every
/// request it read was answered and a GOAWAY was queued last.
async fn read_requests<R: AsyncRead + Unpin>(
    mut frames: FrameReader<R>,
    limits: &ClientLimits,
    node: &NodeHandle,
    answers: mpsc::UnboundedSender<Outgoing>,
    queue: Arc<AnswerQueue>,
    mut shutdown: watch::Receiver<bool>,
) -> Option<FrameReader<R>> {
    let pipeline = limits.max_pipeline.max(1);
    let slots = Arc::new(Semaphore::new(pipeline));
    let answer_now = |response: pb::Response| {
        let bytes = answer_bytes(&response);
        queue.add(bytes)
            && answers
                .send(Outgoing::Answer(Answer {
                    response,
                    bytes,
                    _slot: None,
                }))
                .is_ok()
    };
    loop {
        let next = tokio::select! {
            biased;
            _ = shutdown.changed() => {
                // Answer what was read, then say nothing more will be.
                let all = u32::try_from(pipeline).unwrap_or(u32::MAX);
                let drained = slots.acquire_many(all);
                let _ = tokio::time::timeout(limits.request_timeout, drained).await;
                answer_now(error(0, pb::error::Kind::Unavailable, GOAWAY_MESSAGE));
                return Some(frames);
            }
            f = tokio::time::timeout(limits.idle_timeout, frames.next_charged_frame()) => f,
        };
        let (payload, charge) = match next {
            Err(_) | Ok(Ok(None)) => return None, // idle, or the client is done
            Ok(Ok(Some(frame))) => frame,
            Ok(Err(FrameError::TooLarge { len, max })) => {
                let msg = format!("frame of {len} bytes exceeds the limit of {max}");
                answer_now(error(0, pb::error::Kind::BadRequest, msg));
                return None;
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "binary client read failed");
                return None;
            }
        };
        let (req, op) = match decode_request(payload, limits) {
            Ok(decoded) => decoded,
            // Framing is intact, so the connection stays usable.
            Err(answer) => {
                if !answer_now(*answer) {
                    return None;
                }
                continue;
            }
        };
        // Bounded pipelining: wait for a slot before taking more.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return None;
        };
        let deadline = Instant::now() + limits.request_timeout;
        let session = (req.session != 0).then_some(SessionTag {
            session: req.session,
            seq: req.seq,
            acked_below: req.acked_below,
        });
        let call = Call {
            id: req.id,
            submitted: node.submit_in(op, session).await,
            deadline,
            charge,
            slot,
        };
        if answers.send(Outgoing::Call(call)).is_err() {
            return None;
        }
    }
}

/// Decodes a request into what the node is to do, or into the answer to
/// give at once: a PONG, or why the request is refused.
fn decode_request(
    payload: Bytes,
    limits: &ClientLimits,
) -> Result<(pb::Request, ClientOp), Box<pb::Response>> {
    match mset_pairs(&payload) {
        Some(n) if n > MAX_MSET_PAIRS => {
            let msg = format!("MSET of more than {MAX_MSET_PAIRS} pairs");
            return Err(Box::new(error(0, pb::error::Kind::BadRequest, msg)));
        }
        Some(_) => {}
        // Malformed, or holding groups (which no request has, and which
        // the scan does not look into): refused before decoding.
        None => {
            let msg = "undecodable request: not a well-formed protobuf Request".to_string();
            return Err(Box::new(error(0, pb::error::Kind::BadRequest, msg)));
        }
    }
    let req = pb::Request::decode(payload).map_err(|e| {
        let msg = format!("undecodable request: {e}");
        Box::new(error(0, pb::error::Kind::BadRequest, msg))
    })?;
    match request_to_op(&req, limits) {
        Ok(Some(op)) => Ok((req, op)),
        Ok(None) => Err(Box::new(pb::Response {
            id: req.id,
            result: Some(Res::Pong(pb::Pong {})),
        })),
        Err(e) => Err(Box::new(error(
            req.id,
            pb::error::Kind::BadRequest,
            e.to_string(),
        ))),
    }
}

/// Field number of `Request.mset`, and of `MSet.pairs`.
const MSET_FIELD: u64 = 7;
const PAIRS_FIELD: u64 = 1;

/// The pairs of the MSET in an encoded `Request`, counted without decoding
/// it (decoding would build every pair first); None if the frame is not
/// well-formed protobuf (decoding then says why).
fn mset_pairs(request: &[u8]) -> Option<usize> {
    let mut pairs = 0usize;
    for_each_field(request, |field, body| {
        if field == MSET_FIELD {
            for_each_field(body, |inner, _| {
                pairs += usize::from(inner == PAIRS_FIELD);
                Some(())
            })?;
        }
        Some(())
    })?;
    Some(pairs)
}

/// Calls `f` with each field's number and, for length-delimited ones, its
/// bytes (empty for the others); None at a malformed field.
fn for_each_field(mut buf: &[u8], mut f: impl FnMut(u64, &[u8]) -> Option<()>) -> Option<()> {
    use prost::encoding::decode_varint;
    while !buf.is_empty() {
        let key = decode_varint(&mut buf).ok()?;
        let body: &[u8] = match key & 7 {
            0 => {
                decode_varint(&mut buf).ok()?;
                &[]
            }
            1 => {
                buf = buf.get(8..)?;
                &[]
            }
            5 => {
                buf = buf.get(4..)?;
                &[]
            }
            2 => {
                let len = usize::try_from(decode_varint(&mut buf).ok()?).ok()?;
                let body = buf.get(..len)?;
                buf = buf.get(len..)?;
                body
            }
            _ => return None,
        };
        f(key >> 3, body)?;
    }
    Some(())
}

/// A request the node is working on, holding its share of the budget
/// and its pipeline slot until answered.
struct Call {
    id: u64,
    submitted: Submitted,
    /// When the client is told the outcome is unknown instead.
    deadline: Instant,
    charge: Charge,
    slot: OwnedSemaphorePermit,
}

/// A call's answer, to come.
type Answering = Pin<Box<dyn Future<Output = Answer> + Send>>;

impl Call {
    /// The answer, once the node gives it (or the deadline passes).
    fn answered(self) -> Answering {
        Box::pin(async move {
            let left = self.deadline.saturating_duration_since(Instant::now());
            let reply = tokio::time::timeout(left, self.submitted.reply())
                .await
                .unwrap_or(ClientReply::Failed(FailKind::Timeout));
            drop(self.charge);
            let response = reply_to_response(self.id, reply);
            Answer {
                bytes: answer_bytes(&response),
                response,
                _slot: Some(self.slot),
            }
        })
    }
}

/// What an answer costs while queued: its encoding plus its bookkeeping.
fn answer_bytes(response: &pb::Response) -> usize {
    response.encoded_len() + std::mem::size_of::<Answer>()
}

/// Most bytes of answers written in one batch.
const WRITE_BATCH_BYTES: usize = 256 * 1024;

/// Values longer than this are written from the store's own buffer, not
/// copied into the connection's write buffer.
const SHARED_VALUE_BYTES: usize = 4096;

/// Writes answers as they come, all those ready in one batch; gives up
/// (and closes the connection) when a batch makes no progress for
/// `write_timeout`, or when answers waiting to be written pass the
/// queue's limit. Answers keep being taken in (and counted) while a batch
/// is being written, so a client that does not read is found out by the
/// bytes its answers take, not only by the time it takes.
async fn write_answers<W: AsyncWrite + Unpin>(
    mut writer: W,
    outbox: mpsc::UnboundedReceiver<Outgoing>,
    queue: Arc<AnswerQueue>,
    write_timeout: Duration,
) {
    let mut answers = Answers {
        outbox,
        reading: true,
        calls: FuturesUnordered::new(),
        ready: VecDeque::new(),
        queue,
    };
    let mut buf = Vec::with_capacity(16 * 1024);
    loop {
        if answers.take_ready().is_err() {
            return;
        }
        if answers.ready.is_empty() {
            if answers.all_written() {
                break;
            }
            if answers.take_next().await.is_err() {
                return;
            }
            continue;
        }
        let batch = answers.next_batch();
        let batch_bytes: usize = batch.iter().map(|a| a.bytes).sum();
        let write = write_batch(&mut writer, &batch, &mut buf);
        let Ok(done) = answers.taking_in_while(write, write_timeout).await else {
            return;
        };
        answers.queue.remove(batch_bytes);
        if !done {
            tracing::debug!("binary client does not read its answers; closing");
            answers.queue.closing.notify_one();
            return;
        }
        if buf.capacity() > 2 * WRITE_BATCH_BYTES {
            buf = Vec::with_capacity(16 * 1024);
        }
    }
    let _ = tokio::time::timeout(write_timeout, writer.shutdown()).await;
}

/// The answers queued past their limit: the connection closes.
struct Overflowing;

/// A connection's answers on their way out: requests the node is working
/// on, and answers ready to be written (counted in `queue`).
struct Answers {
    outbox: mpsc::UnboundedReceiver<Outgoing>,
    /// Whether the reader may still hand over more.
    reading: bool,
    calls: FuturesUnordered<Answering>,
    ready: VecDeque<Answer>,
    queue: Arc<AnswerQueue>,
}

impl Answers {
    /// Whether every answer there will be was written.
    fn all_written(&self) -> bool {
        !self.reading && self.calls.is_empty() && self.ready.is_empty()
    }

    /// Waits for one thing from the reader or one call's answer and takes
    /// it in; never completes when nothing more can come.
    async fn take_next(&mut self) -> Result<(), Overflowing> {
        tokio::select! {
            Some(answer) = self.calls.next(), if !self.calls.is_empty() => self.add(answer),
            next = self.outbox.recv(), if self.reading => {
                self.take(next);
                Ok(())
            }
            else => std::future::pending().await,
        }
    }

    /// Runs `write` (for at most `timeout`) while taking in answers;
    /// whether it was done in time.
    async fn taking_in_while(
        &mut self,
        write: impl Future<Output = std::io::Result<()>>,
        timeout: Duration,
    ) -> Result<bool, Overflowing> {
        let write = tokio::time::timeout(timeout, write);
        tokio::pin!(write);
        loop {
            tokio::select! {
                biased;
                written = &mut write => return Ok(matches!(written, Ok(Ok(())))),
                taken = self.take_next() => taken?,
            }
        }
    }

    /// Takes in whatever is there without waiting.
    fn take_ready(&mut self) -> Result<(), Overflowing> {
        while self.reading {
            match self.outbox.try_recv() {
                Ok(outgoing) => self.take(Some(outgoing)),
                Err(mpsc::error::TryRecvError::Disconnected) => self.take(None),
                Err(mpsc::error::TryRecvError::Empty) => break,
            }
        }
        while let Some(Some(answer)) = self.calls.next().now_or_never() {
            self.add(answer)?;
        }
        Ok(())
    }

    /// Takes in what the reader handed over (`None`: it is done).
    fn take(&mut self, next: Option<Outgoing>) {
        match next {
            // Answers the reader gave are counted already.
            Some(Outgoing::Answer(answer)) => self.ready.push_back(answer),
            Some(Outgoing::Call(call)) => self.calls.push(call.answered()),
            None => self.reading = false,
        }
    }

    /// Queues a call's answer, counting its bytes.
    fn add(&mut self, answer: Answer) -> Result<(), Overflowing> {
        if !self.queue.add(answer.bytes) {
            return Err(Overflowing);
        }
        self.ready.push_back(answer);
        Ok(())
    }

    /// The ready answers to write next, up to `WRITE_BATCH_BYTES`.
    fn next_batch(&mut self) -> Vec<Answer> {
        let mut batch = Vec::new();
        let mut bytes = 0;
        while let Some(answer) = self.ready.pop_front() {
            bytes += answer.bytes;
            batch.push(answer);
            if bytes >= WRITE_BATCH_BYTES {
                break;
            }
        }
        batch
    }
}

/// Writes one batch of answers: small ones encoded together in `buf`,
/// long values straight from their shared buffers.
async fn write_batch<W: AsyncWrite + Unpin>(
    writer: &mut W,
    batch: &[Answer],
    buf: &mut Vec<u8>,
) -> std::io::Result<()> {
    buf.clear();
    for answer in batch {
        if let Some(value) = encode_answer(&answer.response, buf) {
            writer.write_all(buf).await?;
            buf.clear();
            writer.write_all(&value).await?;
        }
    }
    if !buf.is_empty() {
        writer.write_all(buf).await?;
    }
    writer.flush().await
}

/// Appends `response`'s frame to `out`, except that a long value is left
/// out and returned: the frame is `out`'s new bytes followed by it.
fn encode_answer(response: &pb::Response, out: &mut Vec<u8>) -> Option<Bytes> {
    use prost::encoding::{encode_varint, encoded_len_varint};
    let Some(Res::Value(pb::Value { value })) = &response.result else {
        encode_frame(response, out);
        return None;
    };
    if value.len() <= SHARED_VALUE_BYTES {
        encode_frame(response, out);
        return None;
    }
    // Field numbers and wire types of client.proto: Response.id = 1
    // (varint), Response.value = 3 (message), Value.value = 1 (bytes).
    const ID_TAG: u8 = 1 << 3;
    const RESULT_VALUE_TAG: u8 = (3 << 3) | 2;
    const VALUE_BYTES_TAG: u8 = (1 << 3) | 2;
    let vlen = value.len() as u64;
    let inner = 1 + encoded_len_varint(vlen) + value.len();
    let id_len = if response.id == 0 {
        0
    } else {
        1 + encoded_len_varint(response.id)
    };
    let total = id_len + 1 + encoded_len_varint(inner as u64) + inner;
    out.extend_from_slice(&(total as u32).to_be_bytes());
    if response.id != 0 {
        out.push(ID_TAG);
        encode_varint(response.id, out);
    }
    out.push(RESULT_VALUE_TAG);
    encode_varint(inner as u64, out);
    out.push(VALUE_BYTES_TAG);
    encode_varint(vlen, out);
    Some(value.clone())
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
        pb::Request {
            id,
            op: Some(op),
            ..Default::default()
        }
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
            request_to_op(
                &pb::Request {
                    id: 3,
                    ..Default::default()
                },
                &l
            ),
            Err(RequestError::NoOp(3))
        );
        assert_eq!(
            request_to_op(&req(4, Op::Get(pb::Get { key: b("toolong") })), &l),
            Err(RequestError::KeyTooLong { len: 7, max: 4 })
        );
    }

    #[test]
    fn an_mset_of_too_many_pairs_is_refused_before_it_is_decoded() {
        let mset = |n: usize| {
            let pairs = (0..n).map(|_| pb::KeyValue::default()).collect();
            Bytes::from(req(5, Op::Mset(pb::MSet { pairs })).encode_to_vec())
        };
        assert_eq!(mset_pairs(&mset(3)), Some(3));
        assert!(decode_request(mset(MAX_MSET_PAIRS), &ClientLimits::default()).is_ok());
        let refused = decode_request(mset(MAX_MSET_PAIRS + 1), &ClientLimits::default())
            .err()
            .and_then(|answer| match answer.result {
                Some(Res::Error(e)) => Some(e.message),
                _ => None,
            });
        assert_eq!(
            refused.as_deref(),
            Some("MSET of more than 32768 pairs"),
            "two bytes a pair on the wire, far more decoded"
        );
        // Pairs spread over several occurrences of the field merge: counted together.
        let mut twice = mset(MAX_MSET_PAIRS / 2 + 1).to_vec();
        twice.extend_from_slice(&mset(MAX_MSET_PAIRS / 2 + 1)[2..]);
        assert_eq!(mset_pairs(&twice), Some(MAX_MSET_PAIRS + 2));
        assert_eq!(mset_pairs(&[0x3a, 0x05, 0x0a]), None, "truncated");
        // A group (field 15) after the pairs: prost would skip it, the scan
        // does not look into it, so the request is refused.
        let mut grouped = mset(MAX_MSET_PAIRS + 1).to_vec();
        grouped.extend_from_slice(&[0x7b, 0x7c]);
        assert!(decode_request(Bytes::from(grouped), &ClientLimits::default()).is_err());
        // Past the scan, the decoded request is checked too.
        let pairs = vec![pb::KeyValue::default(); MAX_MSET_PAIRS + 1];
        assert_eq!(
            request_to_op(&req(6, Op::Mset(pb::MSet { pairs })), &limits()),
            Err(RequestError::TooManyPairs {
                max: MAX_MSET_PAIRS
            })
        );
    }

    #[test]
    fn a_long_value_is_framed_exactly_as_prost_frames_it() {
        for id in [0, 1, 300, u64::MAX] {
            for len in [0, 10, SHARED_VALUE_BYTES, SHARED_VALUE_BYTES + 1, 200_000] {
                let value = Bytes::from(vec![7u8; len]);
                let response = reply_to_response(id, ClientReply::Value(value.clone()));
                let mut expected = Vec::new();
                encode_frame(&response, &mut expected);
                let mut got = b"before".to_vec();
                let shared = encode_answer(&response, &mut got);
                if let Some(shared) = &shared {
                    assert_eq!(shared.as_ptr(), value.as_ptr(), "not copied");
                    got.extend_from_slice(shared);
                }
                assert_eq!(shared.is_some(), len > SHARED_VALUE_BYTES);
                assert_eq!(&got[..6], b"before");
                assert_eq!(&got[6..], &expected[..], "id {id}, {len} bytes");
            }
        }
    }

    /// A request the node has, and the sender through which the test
    /// plays the node answering it.
    fn call(
        id: u64,
        slots: &Arc<Semaphore>,
        timeout: Duration,
    ) -> (tokio::sync::oneshot::Sender<ClientReply>, Outgoing) {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let call = Call {
            id,
            submitted: Submitted::Waiting { rx, timed: None },
            deadline: Instant::now() + timeout,
            charge: Charge::none(),
            // Test only: each test's semaphore has a permit per call it makes.
            slot: slots.clone().try_acquire_owned().unwrap(),
        };
        (reply, Outgoing::Call(call))
    }

    /// The next response frame the client reads.
    async fn next_response<R: AsyncRead + Unpin>(client: &mut R) -> pb::Response {
        use tokio::io::AsyncReadExt;
        let mut len = [0u8; 4];
        // Test only: the other end of this in-memory pipe is the writer
        // under test, so a short read or a frame that does not decode is
        // the failure the test is there to catch.
        client.read_exact(&mut len).await.unwrap();
        let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
        // Test only: as above.
        client.read_exact(&mut frame).await.unwrap();
        // Test only: as above.
        pb::Response::decode(&frame[..]).unwrap()
    }

    #[tokio::test]
    async fn answers_leave_as_the_node_gives_them_and_free_their_slots() {
        let (mut client, server) = tokio::io::duplex(64 << 10);
        let (to_writer, outbox) = mpsc::unbounded_channel();
        let queue = Arc::new(AnswerQueue::new(1 << 20));
        let slots = Arc::new(Semaphore::new(2));
        let (first, c1) = call(1, &slots, Duration::from_secs(30));
        let (second, c2) = call(2, &slots, Duration::from_secs(30));
        assert!(to_writer.send(c1).is_ok() && to_writer.send(c2).is_ok());
        let writer = tokio::spawn(write_answers(
            server,
            outbox,
            queue.clone(),
            Duration::from_secs(5),
        ));

        // The later request is answered first: it is not held behind the other.
        assert!(second.send(ClientReply::Ok).is_ok());
        let r = next_response(&mut client).await;
        assert_eq!((r.id, r.result), (2, Some(Res::Ok(pb::Ok {}))));
        let value = Bytes::from_static(b"v");
        assert!(first.send(ClientReply::Value(value.clone())).is_ok());
        let r = next_response(&mut client).await;
        assert_eq!((r.id, r.result), (1, Some(Res::Value(pb::Value { value }))));

        drop(to_writer);
        assert!(writer.await.is_ok());
        assert_eq!(
            slots.available_permits(),
            2,
            "a written answer frees its slot"
        );
        assert_eq!(
            queue.queued.load(Ordering::Relaxed),
            0,
            "nothing counted once written"
        );
    }

    #[tokio::test]
    async fn a_request_the_node_does_not_answer_in_time_is_told_its_outcome_is_unknown() {
        let (mut client, server) = tokio::io::duplex(64 << 10);
        let (to_writer, outbox) = mpsc::unbounded_channel();
        let queue = Arc::new(AnswerQueue::new(1 << 20));
        let slots = Arc::new(Semaphore::new(1));
        let (_never, c) = call(7, &slots, Duration::from_millis(20));
        assert!(to_writer.send(c).is_ok());
        drop(to_writer);
        let writer = tokio::spawn(write_answers(server, outbox, queue, Duration::from_secs(5)));
        let r = next_response(&mut client).await;
        assert_eq!(r.id, 7);
        let Some(Res::Error(e)) = r.result else {
            panic!("an error, not {:?}", r.result);
        };
        assert_eq!(e.kind, pb::error::Kind::Unknown as i32);
        assert_eq!(e.message, FailKind::Timeout.message());
        assert!(writer.await.is_ok());
    }

    #[tokio::test]
    async fn answers_a_client_does_not_read_are_counted_until_the_limit_closes_it() {
        // A one-byte pipe the client never reads: the first answer's write
        // blocks, and the answers behind it pile up in the queue.
        let (_client, server) = tokio::io::duplex(1);
        let (to_writer, outbox) = mpsc::unbounded_channel();
        let big = Bytes::from(vec![b'x'; 10_000]);
        let queue = Arc::new(AnswerQueue::new(25_000));
        let slots = Arc::new(Semaphore::new(8));
        let mut replies = Vec::new();
        for id in 1..=8 {
            let (reply, c) = call(id, &slots, Duration::from_secs(30));
            assert!(to_writer.send(c).is_ok());
            replies.push(reply);
        }
        let writer = tokio::spawn(write_answers(
            server,
            outbox,
            queue.clone(),
            Duration::from_secs(30),
        ));
        let closing = queue.closing.notified();
        for reply in replies {
            let _ = reply.send(ClientReply::Value(big.clone()));
            tokio::task::yield_now().await;
        }
        // Well before the 30 s write timeout.
        let closed = tokio::time::timeout(Duration::from_secs(5), closing).await;
        assert!(closed.is_ok(), "the queue's limit closed the connection");
        assert!(writer.await.is_ok(), "the writer stopped");
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
