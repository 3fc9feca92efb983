//! Redis clients on the client port: a connection whose first byte is `*`
//! (a RESP array, what every Redis client library, redis-cli and
//! redis-benchmark send) speaks RESP2, or RESP3 after `HELLO 3`. Commands
//! are served concurrently and answered in order (pipelining). On a
//! follower, a request the leader must serve is forwarded to it over RESP
//! and its answer relayed (over TLS, as the node itself, when TLS is on),
//! so a client connected to any node just works; with no leader known the
//! answer is `-TRYAGAIN`.
//!
//! Commands: PING ECHO HELLO AUTH CLIENT COMMAND SELECT QUIT INFO CONFIG
//! (GET only, empty), GET SET (NX XX GET KEEPTTL) SETNX GETSET MGET MSET
//! MSETNX DEL EXISTS INCR INCRBY DECR DECRBY APPEND STRLEN DBSIZE SCAN
//! (MATCH COUNT TYPE) KEYS (at most `crate::api::MAX_KEYS_ANSWERED`) FLUSHDB FLUSHALL, and
//! `CAS key expected new` (`:1` if swapped, `:0` if not). Expiry (EX, PX,
//! EXPIRE, TTL, ...) is refused: a TTL needs time carried in the log, and
//! this store keeps none. Transactions and other data types answer
//! `-ERR unknown command`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::budget::{Charge, ConnectionBudget};
use super::resp::{encode_command, read_raw_reply, Reply, RespError, RespLimits, RespReader};
use super::scan_cursors::ScanCursors;
use super::ClientLimits;
use crate::api::{ClientOp, ClientReply, FailKind, NodeHandle, SetCondition, Submitted};

/// The Redis version this server says it is compatible with.
pub const REDIS_VERSION: &str = "7.0.0";

/// Arguments in one command, at most (an MSET of 32,768 pairs).
const MAX_ARGS: usize = 1 << 16;

/// What each argument costs against the connection budget besides its
/// bytes (its `Bytes` handle and framing).
const ARG_OVERHEAD_BYTES: usize = 48;

/// A command that marks a connection as one node forwarding to another:
/// what it sends is never forwarded again (no loops while leadership moves).
const FORWARDED_MARK: &[u8] = b"KV.FORWARDED";

/// What every Redis connection of a node shares.
#[derive(Default)]
pub struct RedisShared {
    /// The password AUTH must give (None: no password).
    pub password: Option<String>,
    /// Connection ids (CLIENT ID).
    next_id: AtomicU64,
    /// With TLS on, how a follower reaches the leader's client port to
    /// forward (as itself: its node certificate, the cluster CA).
    #[cfg(not(madsim))]
    forward_tls: Option<tokio_rustls::TlsConnector>,
}

impl RedisShared {
    /// Settings with `password`, forwarding over plain TCP.
    pub fn new(password: Option<String>) -> Arc<Self> {
        Arc::new(RedisShared {
            password,
            next_id: AtomicU64::new(1),
            #[cfg(not(madsim))]
            forward_tls: None,
        })
    }

    /// Settings with `password`, forwarding with `tls` (None: plain TCP).
    #[cfg(not(madsim))]
    pub fn forwarding_over(
        password: Option<String>,
        tls: Option<tokio_rustls::TlsConnector>,
    ) -> Arc<Self> {
        Arc::new(RedisShared {
            password,
            next_id: AtomicU64::new(1),
            forward_tls: tls,
        })
    }
}

/// One connection's state.
struct Session {
    version: u8,
    name: Option<Bytes>,
    id: u64,
    authed: bool,
    /// A forwarding node, not a client: never forward further.
    forwarded: bool,
    /// The SCAN cursors handed out on this connection.
    cursors: Arc<ScanCursors>,
}

impl Session {
    /// A new connection: RESP2, its own id, authenticated if no password
    /// is set.
    fn new(shared: &RedisShared) -> Self {
        Session {
            version: 2,
            name: None,
            id: shared.next_id.fetch_add(1, Ordering::Relaxed),
            authed: shared.password.is_none(),
            forwarded: false,
            cursors: Arc::new(ScanCursors::default()),
        }
    }
}

/// How a node reply becomes a Redis reply, per command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Render {
    /// A value or null (GET).
    Value,
    /// `+OK`, or null if not set (SET NX/XX).
    OkOrNull,
    /// `:1` if written, `:0` if not (SETNX, CAS).
    Wrote,
    /// The old value or null (GETSET, SET ... GET).
    Old,
    /// A number.
    Int,
    /// `+OK`
    Ok,
    /// An array of values or nulls (MGET).
    Values,
    /// `[cursor, [keys]]` (SCAN).
    Page,
    /// `[cursor, []]`: SCAN ... TYPE of a type this store holds none of
    /// (every value is a string); the cursor still moves on.
    EmptyPage,
    /// An array of keys (KEYS).
    Keys,
}

/// What a command asks for.
enum Action {
    /// Answered here, at once.
    Local(Reply),
    /// Answered here, then the connection closes (QUIT, a protocol error).
    Close(Reply),
    /// Served by the node.
    Node(ClientOp, Render),
}

/// What the RESP reader accepts, from the client limits.
fn resp_limits(limits: &ClientLimits) -> RespLimits {
    RespLimits {
        max_args: MAX_ARGS,
        max_arg_bytes: limits.text.max_value_bytes.max(limits.text.max_key_bytes),
        max_command_bytes: limits.max_frame_bytes,
        max_inline_bytes: limits.text.max_line_bytes,
    }
}

/// The connection's next command; None when it is to close: the client
/// left or went idle too long, the node is stopping, or the client sent
/// what is not RESP (it is told why first).
async fn next_command<R: AsyncRead + Unpin>(
    commands: &mut RespReader<R>,
    shutdown: &mut watch::Receiver<bool>,
    idle_timeout: std::time::Duration,
    answers: &mpsc::Sender<Pending>,
) -> Option<Vec<Bytes>> {
    let next = tokio::select! {
        biased;
        _ = shutdown.changed() => return None,
        c = tokio::time::timeout(idle_timeout, commands.next_command()) => c,
    };
    match next {
        Err(_) | Ok(Ok(None)) => None,
        Ok(Ok(Some(args))) => Some(args),
        Ok(Err(RespError::Truncated | RespError::Io(_))) => None,
        Ok(Err(e)) => {
            let _ = queue(answers, encode(&Reply::Error(format!("ERR {e}")), 2)).await;
            None
        }
    }
}

/// Serves one Redis connection until it closes or the node stops.
///
/// Two tasks: this one reads commands and hands them to the node, the
/// writer (`write_answers`) takes the node's replies in command order,
/// forwards what a follower cannot serve, and writes the answers. The
/// node's reply wakes the writer directly: no task per command.
#[allow(clippy::too_many_arguments)]
pub async fn serve_redis<R, W>(
    reader: R,
    writer: W,
    limits: &ClientLimits,
    node: &NodeHandle,
    budget: &ConnectionBudget,
    mut shutdown: watch::Receiver<bool>,
    initial: &[u8],
    shared: Arc<RedisShared>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut commands =
        RespReader::new(reader, resp_limits(limits), initial).charging(budget.clone());
    let mut session = Session::new(&shared);
    let pipeline = limits.max_pipeline.max(1);
    let (answers, in_order) = mpsc::channel::<Pending>(pipeline);
    let answering = Answering {
        forwarder: Forwarder::new(&shared),
        cursors: session.cursors.clone(),
        forward_timeout: limits.request_timeout,
        max_answer: limits.max_answer_bytes,
    };
    let writing = tokio::spawn(write_answers(
        writer,
        in_order,
        answering,
        limits.write_timeout,
    ));
    let mut line = Line::new(pipeline);
    while let Some(args) =
        next_command(&mut commands, &mut shutdown, limits.idle_timeout, &answers).await
    {
        let bytes: usize = args.iter().map(|a| a.len() + ARG_OVERHEAD_BYTES).sum();
        let charge = budget.charge(bytes).await;
        let action = refuse_long_keys(
            command(&args, &mut session, &shared, node),
            limits.text.max_key_bytes,
        );
        let pending = match action {
            Action::Local(reply) => Pending::Ready(encode(&reply, session.version), charge),
            Action::Close(reply) => {
                let _ = queue(&answers, encode(&reply, session.version)).await;
                break;
            }
            Action::Node(op, render) => {
                let is_read = op.is_read();
                let Some(slot) = line.enter(is_read).await else {
                    break;
                };
                let deadline = Instant::now() + limits.request_timeout;
                let asked = Asked {
                    args,
                    render,
                    is_read,
                    version: session.version,
                    forwarded: session.forwarded,
                    deadline,
                    _charge: charge,
                    _slot: slot,
                };
                Pending::Node(node.submit(op).await, asked)
            }
        };
        if answers.send(pending).await.is_err() {
            break;
        }
    }
    drop(answers);
    let _ = writing.await;
    super::server::drain(&mut commands.into_inner()).await;
}

/// How deep a connection's pipeline may go, and where a run of reads
/// turns into a run of writes or back.
///
/// Redis runs a connection's commands in order. Reads and writes go
/// different ways through the node (ReadIndex or the log), so where a run
/// of one turns into the other, everything before is answered first;
/// within a run the node keeps the order in which they are submitted, and
/// the writer answers in that order.
struct Line {
    /// One permit per command in flight (the pipeline's depth), given
    /// back when the command is answered.
    slots: Arc<Semaphore>,
    depth: u32,
    /// Whether the commands in flight are reads (None: none yet).
    run_of_reads: Option<bool>,
}

impl Line {
    fn new(pipeline: usize) -> Self {
        Line {
            slots: Arc::new(Semaphore::new(pipeline)),
            depth: u32::try_from(pipeline).unwrap_or(u32::MAX),
            run_of_reads: None,
        }
    }

    /// Takes a slot for the next command, waiting for everything before
    /// it to be answered if it starts a run of the other kind. None: the
    /// connection is closing.
    async fn enter(&mut self, is_read: bool) -> Option<OwnedSemaphorePermit> {
        if self.run_of_reads.is_some_and(|r| r != is_read) {
            // All permits free means nothing is in flight.
            drop(self.slots.acquire_many(self.depth).await.ok()?);
        }
        self.run_of_reads = Some(is_read);
        self.slots.clone().acquire_owned().await.ok()
    }
}

/// An answer on its way to the client, in the order the commands came.
enum Pending {
    /// Answered on this node without asking the core, with the charge of
    /// its command held until the answer is taken for writing (an ECHO's
    /// answer is as large as its command).
    Ready(Bytes, Charge),
    /// Submitted to the node; answered once it replies.
    Node(Submitted, Asked),
}

/// A command the node is serving: what its answer needs, and its share of
/// the connection's budget and its pipeline slot, held until answered.
struct Asked {
    args: Vec<Bytes>,
    render: Render,
    is_read: bool,
    version: u8,
    /// The connection comes from a follower forwarding: never forward on.
    forwarded: bool,
    /// When the node's reply stops being waited for.
    deadline: Instant,
    _charge: Charge,
    _slot: OwnedSemaphorePermit,
}

/// What turning a node's reply into a command's answer needs.
struct Answering {
    forwarder: Forwarder,
    cursors: Arc<ScanCursors>,
    /// How long a forwarded command may take at the leader.
    forward_timeout: Duration,
    max_answer: usize,
}

impl Answering {
    /// The answer, if it can be given without waiting.
    // The pending answer goes back to the caller by value: boxing it
    // would cost an allocation per command.
    #[allow(clippy::result_large_err)]
    fn ready_now(&self, pending: Pending) -> Result<Bytes, Pending> {
        match pending {
            Pending::Ready(bytes, _charge) => Ok(bytes),
            Pending::Node(submitted, asked) => match submitted.try_reply() {
                Ok(reply) if !Self::must_forward(&reply, &asked) => Ok(self.render(reply, &asked)),
                Ok(reply) => Err(Pending::Node(Submitted::Ready(reply), asked)),
                Err(submitted) => Err(Pending::Node(submitted, asked)),
            },
        }
    }

    /// Adds the answer to `out` once the node replied (within the request
    /// timeout). A follower's redirect is forwarded to the leader, together
    /// with the redirects right behind it in `outbox` (one pipeline to the
    /// leader, answers relayed in order as they come). False: the client
    /// stopped taking its answers.
    async fn answer_into<W: AsyncWrite + Unpin>(
        &mut self,
        pending: Pending,
        outbox: &mut Outbox,
        out: &mut Spill<W>,
    ) -> bool {
        let (submitted, asked) = match pending {
            Pending::Ready(bytes, _charge) => return out.push(&bytes).await,
            Pending::Node(submitted, asked) => (submitted, asked),
        };
        let reply = tokio::time::timeout(left(asked.deadline), submitted.reply())
            .await
            .unwrap_or(ClientReply::Failed(FailKind::Timeout));
        let leader = match reply {
            ClientReply::Redirect(leader) if !asked.forwarded => leader,
            reply => return out.push(&self.render(reply, &asked)).await,
        };
        let version = asked.version;
        let mut batch = vec![asked];
        while batch.len() < MAX_FORWARD_BATCH {
            match outbox.try_next() {
                Some(Pending::Node(submitted, next))
                    if !next.forwarded && next.version == version =>
                {
                    match submitted.try_reply() {
                        Ok(ClientReply::Redirect(to)) if to == leader => batch.push(next),
                        Ok(reply) => {
                            outbox.put_back(Pending::Node(Submitted::Ready(reply), next));
                            break;
                        }
                        Err(submitted) => {
                            outbox.put_back(Pending::Node(submitted, next));
                            break;
                        }
                    }
                }
                Some(other) => {
                    outbox.put_back(other);
                    break;
                }
                None => break,
            }
        }
        if let [one] = batch.as_slice() {
            let answer = self.forward_one(leader, one).await;
            out.push(&answer).await
        } else {
            self.forwarder
                .forward_batch(leader, version, &batch, self.forward_timeout, out)
                .await
        }
    }

    /// Forwards one command to the leader (a read is tried twice).
    async fn forward_one(&mut self, leader: SocketAddr, asked: &Asked) -> Bytes {
        let version = asked.version;
        let forward = self
            .forwarder
            .forward(leader, &asked.args, version, asked.is_read);
        match tokio::time::timeout(self.forward_timeout, forward).await {
            Ok(bytes) => bytes,
            Err(_) => unanswered(asked, "the leader did not answer in time"),
        }
    }

    /// Whether `reply` sends the command on to the leader.
    fn must_forward(reply: &ClientReply, asked: &Asked) -> bool {
        matches!(reply, ClientReply::Redirect(_)) && !asked.forwarded
    }

    /// The node's reply as this command's answer, or a refusal if it is
    /// past the size limit.
    fn render(&self, reply: ClientReply, asked: &Asked) -> Bytes {
        if answer_bytes(&reply) > self.max_answer {
            let why = format!("ERR the answer would exceed {} bytes", self.max_answer);
            return encode(&Reply::Error(why), asked.version);
        }
        encode(
            &render_reply(reply, asked.render, &self.cursors),
            asked.version,
        )
    }
}

/// Most bytes of answers gathered into one write.
const WRITE_BATCH_BYTES: usize = 256 * 1024;

/// The connection's way out: answers gathered for the client, written
/// whenever they reach `WRITE_BATCH_BYTES` and when the writer flushes.
/// However many large answers a forwarded pipeline brings back, a
/// connection holds about one write's worth of them.
struct Spill<W> {
    writer: W,
    buf: Vec<u8>,
    write_timeout: Duration,
}

impl<W: AsyncWrite + Unpin> Spill<W> {
    fn new(writer: W, write_timeout: Duration) -> Self {
        Spill {
            writer,
            buf: Vec::with_capacity(16 * 1024),
            write_timeout,
        }
    }

    /// Adds one answer, writing the batch once it is full. False: the
    /// client did not take it within the write timeout.
    async fn push(&mut self, answer: &[u8]) -> bool {
        self.buf.extend_from_slice(answer);
        self.buf.len() < WRITE_BATCH_BYTES || self.flush().await
    }

    /// Writes what is gathered. False: the client did not take it within
    /// the write timeout.
    async fn flush(&mut self) -> bool {
        if self.buf.is_empty() {
            return true;
        }
        let write = async {
            self.writer.write_all(&self.buf).await?;
            self.writer.flush().await
        };
        let written = matches!(
            tokio::time::timeout(self.write_timeout, write).await,
            Ok(Ok(()))
        );
        self.buf.clear();
        if self.buf.capacity() > 2 * WRITE_BATCH_BYTES {
            self.buf = Vec::with_capacity(16 * 1024);
        }
        written
    }
}

/// Most commands a follower forwards to the leader in one pipeline.
const MAX_FORWARD_BATCH: usize = 64;

/// The answers still to give, in command order, with room to look at the
/// next one and put it back.
struct Outbox {
    in_order: mpsc::Receiver<Pending>,
    peeked: Option<Pending>,
}

impl Outbox {
    /// The next answer to give, waiting for its command if need be.
    async fn next(&mut self) -> Option<Pending> {
        match self.peeked.take() {
            Some(p) => Some(p),
            None => self.in_order.recv().await,
        }
    }

    /// The next answer to give, if its command was read already.
    fn try_next(&mut self) -> Option<Pending> {
        self.peeked.take().or_else(|| self.in_order.try_recv().ok())
    }

    /// Makes `pending` the next again.
    fn put_back(&mut self, pending: Pending) {
        debug_assert!(self.peeked.is_none(), "one answer put back at a time");
        self.peeked = Some(pending);
    }
}

/// Writes the answers in the order the commands came, each as soon as it
/// is ready; answers ready together go out in one write. Forwarded
/// commands therefore reach the leader in order too. Stops when the
/// client does not take its answers within `write_timeout`.
async fn write_answers<W: AsyncWrite + Unpin>(
    writer: W,
    in_order: mpsc::Receiver<Pending>,
    mut answering: Answering,
    write_timeout: Duration,
) {
    let mut outbox = Outbox {
        in_order,
        peeked: None,
    };
    let mut out = Spill::new(writer, write_timeout);
    while let Some(next) = outbox.next().await {
        if !answering.answer_into(next, &mut outbox, &mut out).await {
            return;
        }
        // Whatever else is answered already goes in the same write; what
        // was gathered goes out before waiting for an answer not ready.
        while let Some(more) = outbox.try_next() {
            let taken = match answering.ready_now(more) {
                Ok(bytes) => out.push(&bytes).await,
                Err(waiting) => {
                    out.flush().await && answering.answer_into(waiting, &mut outbox, &mut out).await
                }
            };
            if !taken {
                return;
            }
        }
        if !out.flush().await {
            return;
        }
    }
    let _ = out.writer.shutdown().await;
}

/// The time left until `deadline` (the simulation's clock has no
/// `timeout_at`).
fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// The answer to a forwarded command the leader did not answer: a read
/// may simply be tried again (`TRYAGAIN`), a write may or may not have
/// been done.
fn unanswered(asked: &Asked, why: &str) -> Bytes {
    if asked.is_read {
        encode(&try_again(why), asked.version)
    } else {
        let error = format!("ERR outcome unknown: {why}");
        encode(&Reply::Error(error), asked.version)
    }
}

/// About how many bytes a reply takes once encoded (values and keys, and
/// a little for each item's framing).
fn answer_bytes(reply: &ClientReply) -> usize {
    let items = |lens: &mut dyn Iterator<Item = usize>| {
        lens.map(|l| l.saturating_add(16))
            .fold(0usize, usize::saturating_add)
    };
    match reply {
        ClientReply::Value(v) => v.len(),
        ClientReply::Values(vs) => items(&mut vs.iter().map(|v| v.as_ref().map_or(0, Bytes::len))),
        ClientReply::Keys(keys) | ClientReply::Page { keys, .. } => {
            items(&mut keys.iter().map(Bytes::len))
        }
        _ => 0,
    }
}

/// Queues an answer that is ready now; false if the writer is gone.
async fn queue(answers: &mpsc::Sender<Pending>, bytes: Bytes) -> bool {
    answers
        .send(Pending::Ready(bytes, Charge::none()))
        .await
        .is_ok()
}

fn encode(reply: &Reply, version: u8) -> Bytes {
    let mut out = Vec::new();
    reply.encode(version, &mut out);
    Bytes::from(out)
}

/// A byte stream to the leader: plain TCP, or TLS over it.
trait Duplex: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Duplex for T {}

/// A kept connection to the leader.
struct LeaderConn {
    leader: SocketAddr,
    /// The protocol version it was opened with.
    version: u8,
    stream: Box<dyn Duplex>,
    /// What was read past the last answer.
    buf: BytesMut,
}

/// A connection to the leader for forwarding, opened when first needed.
struct Forwarder {
    conn: Option<LeaderConn>,
    dialer: Dialer,
}

/// How a follower opens a connection to the leader's client port.
struct Dialer {
    /// The cluster's Redis password, given to the leader before anything.
    password: Option<String>,
    /// With TLS on: as this node, with its own certificate.
    #[cfg(not(madsim))]
    tls: Option<tokio_rustls::TlsConnector>,
}

impl Forwarder {
    /// No connection yet.
    fn new(shared: &RedisShared) -> Self {
        let dialer = Dialer {
            password: shared.password.clone(),
            #[cfg(not(madsim))]
            tls: shared.forward_tls.clone(),
        };
        Forwarder { conn: None, dialer }
    }

    /// Sends `args` to the leader at `leader` and returns its raw answer,
    /// or an error reply: `TRYAGAIN` when the command surely did not reach
    /// it, `outcome unknown` for a write that may have. A read is sent
    /// again once on a fresh connection; a write never (it could apply
    /// twice). The connection is kept only after a whole answer was read,
    /// so an answer can never be taken for a later command's.
    async fn forward(
        &mut self,
        leader: SocketAddr,
        args: &[Bytes],
        version: u8,
        is_read: bool,
    ) -> Bytes {
        let mut conn = self.kept(leader, version).await;
        for _ in 0..if is_read { 2 } else { 1 } {
            let mut c = match conn.take() {
                Some(c) => c,
                None => match self.dialer.connect(leader, version).await {
                    Ok(c) => c,
                    Err(e) => {
                        let why = format!("leader {leader} unreachable: {e}");
                        return encode(&try_again(&why), version);
                    }
                },
            };
            let mut out = Vec::new();
            encode_command(args, &mut out);
            let exchanged = async {
                c.stream.write_all(&out).await?;
                c.stream.flush().await?;
                read_raw_reply(&mut c.stream, &mut c.buf, 64 << 20).await
            };
            if let Ok(raw) = exchanged.await {
                self.conn = Some(c);
                return raw;
            }
            // Sent, or partly: a write may have reached the leader, so it
            // is not sent again; a read is, once, on a fresh connection.
        }
        encode(
            &Reply::Error(format!(
                "ERR outcome unknown: the connection to leader {leader} was lost"
            )),
            version,
        )
    }

    /// Sends the commands of `batch` to the leader at `leader` as one
    /// pipeline and relays its raw answers to `out` in order, each as it
    /// comes. Those it did not answer (within `timeout` of the one
    /// before) get `TRYAGAIN` if they surely did not reach it or are reads,
    /// `outcome unknown` if they are writes that may have; nothing is sent
    /// twice. False: the client stopped taking its answers.
    async fn forward_batch<W: AsyncWrite + Unpin>(
        &mut self,
        leader: SocketAddr,
        version: u8,
        batch: &[Asked],
        timeout: Duration,
        out: &mut Spill<W>,
    ) -> bool {
        // The time the leader has for its next answer: what the client
        // takes to read the answers relayed is not counted (the write
        // timeout bounds that), and a long pipeline of large answers is
        // not cut short while they keep coming.
        let mut deadline = Instant::now() + timeout;
        let mut c = match self.kept(leader, version).await {
            Some(c) => c,
            None => {
                match tokio::time::timeout(left(deadline), self.dialer.connect(leader, version))
                    .await
                {
                    Ok(Ok(c)) => c,
                    failed => {
                        let why = match failed {
                            Ok(Err(e)) => format!("leader {leader} unreachable: {e}"),
                            _ => format!("leader {leader} did not answer in time"),
                        };
                        let refused = encode(&try_again(&why), version);
                        for _ in batch {
                            if !out.push(&refused).await {
                                return false;
                            }
                        }
                        return true;
                    }
                }
            }
        };
        let mut commands = Vec::new();
        for asked in batch {
            encode_command(&asked.args, &mut commands);
        }
        let mut answered = 0;
        let sent = async {
            c.stream.write_all(&commands).await?;
            c.stream.flush().await
        };
        if matches!(tokio::time::timeout(left(deadline), sent).await, Ok(Ok(()))) {
            while answered < batch.len() {
                let read = read_raw_reply(&mut c.stream, &mut c.buf, 64 << 20);
                let Ok(Ok(raw)) = tokio::time::timeout(left(deadline), read).await else {
                    break;
                };
                answered += 1;
                if !out.push(&raw).await {
                    // Answers may still be on their way: the connection
                    // is not kept.
                    return false;
                }
                deadline = Instant::now() + timeout;
            }
        }
        if answered == batch.len() {
            self.conn = Some(c);
            return true;
        }
        let why = format!("the connection to leader {leader} was lost");
        for asked in batch.iter().skip(answered) {
            if !out.push(&unanswered(asked, &why)).await {
                return false;
            }
        }
        true
    }

    /// The kept connection if it is to `leader` with protocol `version`,
    /// unless the leader closed it meanwhile (then nothing is sent on it).
    async fn kept(&mut self, leader: SocketAddr, version: u8) -> Option<LeaderConn> {
        let mut conn = self
            .conn
            .take()
            .filter(|c| c.leader == leader && c.version == version)?;
        still_open(&mut conn.stream).await.then_some(conn)
    }
}

impl Dialer {
    /// Opens a connection to the leader's client port (over TLS if on),
    /// gives the password, marks it as forwarding and sets the protocol.
    async fn connect(&self, leader: SocketAddr, version: u8) -> Result<LeaderConn, RespError> {
        let opened = async {
            let tcp = TcpStream::connect(leader).await?;
            let _ = tcp.set_nodelay(true);
            self.secure(leader, tcp).await
        };
        let mut stream = tokio::time::timeout(Duration::from_secs(2), opened)
            .await
            .map_err(|_| RespError::Protocol("connect timed out".into()))??;
        let mut buf = BytesMut::new();
        let mut hello = Vec::new();
        if let Some(password) = &self.password {
            let auth = [
                Bytes::from_static(b"AUTH"),
                Bytes::copy_from_slice(password.as_bytes()),
            ];
            encode_command(&auth, &mut hello);
        }
        encode_command(&[Bytes::from_static(FORWARDED_MARK)], &mut hello);
        if version >= 3 {
            encode_command(
                &[Bytes::from_static(b"HELLO"), Bytes::from_static(b"3")],
                &mut hello,
            );
        }
        stream.write_all(&hello).await?;
        if self.password.is_some() {
            let answer = read_raw_reply(&mut stream, &mut buf, 1 << 20).await?;
            if !answer.starts_with(b"+OK") {
                return Err(RespError::Protocol(
                    "the leader refused this node's Redis password (set the same on every node)"
                        .into(),
                ));
            }
        }
        read_raw_reply(&mut stream, &mut buf, 1 << 20).await?;
        if version >= 3 {
            read_raw_reply(&mut stream, &mut buf, 1 << 20).await?;
        }
        Ok(LeaderConn {
            leader,
            version,
            stream,
            buf,
        })
    }

    /// `tcp` as the stream to forward on: TLS over it when TLS is on.
    async fn secure(&self, leader: SocketAddr, tcp: TcpStream) -> std::io::Result<Box<dyn Duplex>> {
        #[cfg(not(madsim))]
        if let Some(tls) = &self.tls {
            let name = crate::tls::server_name(leader);
            return Ok(Box::new(tls.connect(name, tcp).await?));
        }
        let _ = leader;
        Ok(Box::new(tcp))
    }
}

/// Whether a kept connection is still open: a read does not complete at
/// once (EOF, an error, or bytes the leader sent unasked all would).
/// Polled once, with no timer: a zero timeout waits for the timer's next
/// tick, a millisecond added to every forwarded command.
async fn still_open(stream: &mut Box<dyn Duplex>) -> bool {
    let mut byte = [0u8; 1];
    std::future::poll_fn(|cx| {
        let mut buf = tokio::io::ReadBuf::new(&mut byte);
        let read = std::pin::Pin::new(&mut *stream).poll_read(cx, &mut buf);
        std::task::Poll::Ready(read.is_pending())
    })
    .await
}

/// Longest glob SCAN MATCH and KEYS take (matching is linear in the
/// pattern per key byte at worst, and runs in the node's core).
const MAX_PATTERN_BYTES: usize = 256;

/// Largest SCAN COUNT honoured (a call looks at up to ten times as many
/// keys, in the node's core).
const MAX_SCAN_COUNT: usize = 10_000;

fn pattern_too_long() -> Reply {
    Reply::Error(format!("ERR pattern longer than {MAX_PATTERN_BYTES} bytes"))
}

fn try_again(why: &str) -> Reply {
    Reply::Error(format!("TRYAGAIN {why}"))
}

fn wrong_args(name: &str) -> Reply {
    Reply::Error(format!(
        "ERR wrong number of arguments for '{}' command",
        name.to_ascii_lowercase()
    ))
}

fn syntax_error() -> Reply {
    Reply::Error("ERR syntax error".into())
}

fn no_expiry() -> Reply {
    Reply::Error(
        "ERR expiry is not supported: a TTL needs time carried in the replicated log, and this store keeps none"
            .into(),
    )
}

fn not_integer() -> Reply {
    Reply::Error("ERR value is not an integer or out of range".into())
}

/// Parses a decimal integer argument.
fn int_arg(arg: &[u8]) -> Option<i64> {
    kv_engine::kv::parse_integer(arg)
}

/// A command naming a key longer than `--max-key-bytes` is refused, as on
/// the other protocols.
fn refuse_long_keys(action: Action, max: usize) -> Action {
    if let Action::Node(op, _) = &action {
        let longest = op.keys().iter().map(|k| k.len()).max().unwrap_or(0);
        if longest > max {
            let why = format!("ERR key too long ({longest} > {max} bytes)");
            return Action::Local(Reply::Error(why));
        }
    }
    action
}

/// Decides what a command asks for (and changes the connection's state
/// for the commands that are about the connection itself).
fn command(args: &[Bytes], s: &mut Session, shared: &RedisShared, node: &NodeHandle) -> Action {
    let Some((name, rest)) = args.split_first() else {
        return Action::Local(Reply::Error("ERR empty command".into()));
    };
    let upper = String::from_utf8_lossy(name).to_ascii_uppercase();
    if !s.authed && !matches!(upper.as_str(), "AUTH" | "HELLO" | "QUIT") {
        return Action::Local(Reply::Error("NOAUTH Authentication required.".into()));
    }
    match upper.as_str() {
        "PING" => Action::Local(match rest {
            [] => Reply::Simple("PONG".into()),
            [msg] => Reply::Bulk(msg.clone()),
            _ => wrong_args(&upper),
        }),
        "ECHO" => Action::Local(match rest {
            [msg] => Reply::Bulk(msg.clone()),
            _ => wrong_args(&upper),
        }),
        "QUIT" => Action::Close(Reply::ok()),
        "KV.FORWARDED" => {
            s.forwarded = true;
            Action::Local(Reply::ok())
        }
        "HELLO" => Action::Local(hello(rest, s, shared, node)),
        "AUTH" => Action::Local(auth(rest, s, shared)),
        "SELECT" => Action::Local(match rest {
            [db] if db.as_ref() == b"0" => Reply::ok(),
            [_] => Reply::Error("ERR DB index is out of range".into()),
            _ => wrong_args(&upper),
        }),
        "CLIENT" => Action::Local(client(rest, s)),
        "COMMAND" => Action::Local(match rest.first().map(|a| a.to_ascii_uppercase()) {
            Some(sub) if sub == b"COUNT" => Reply::Int(0),
            Some(sub) if sub == b"DOCS" => Reply::Map(Vec::new()),
            Some(sub) if sub == b"INFO" => {
                Reply::Array(rest.iter().skip(1).map(|_| Reply::Null).collect())
            }
            _ => Reply::Array(Vec::new()),
        }),
        "CONFIG" => Action::Local(match rest.first().map(|a| a.to_ascii_uppercase()) {
            Some(sub) if sub == b"GET" => Reply::Map(Vec::new()),
            _ => Reply::Error(
                "ERR CONFIG is not supported here (only CONFIG GET, answered empty)".into(),
            ),
        }),
        "INFO" => Action::Local(info(node, rest)),
        _ => data_command(&upper, rest, &s.cursors),
    }
}

/// HELLO [protover [AUTH user pass] [SETNAME name]]
fn hello(rest: &[Bytes], s: &mut Session, shared: &RedisShared, node: &NodeHandle) -> Reply {
    let mut version = s.version;
    let mut args = rest.iter();
    if let Some(v) = args.next() {
        match int_arg(v) {
            Some(2) => version = 2,
            Some(3) => version = 3,
            _ => return Reply::Error("NOPROTO unsupported protocol version".into()),
        }
    }
    // Every option is read before any takes effect: a malformed HELLO
    // changes nothing, authentication included (as in Redis).
    let (mut credentials, mut name) = (None, None);
    while let Some(opt) = args.next() {
        match opt.to_ascii_uppercase().as_slice() {
            b"AUTH" => {
                let (Some(user), Some(pass)) = (args.next(), args.next()) else {
                    return syntax_error();
                };
                credentials = Some([user.clone(), pass.clone()]);
            }
            b"SETNAME" => match args.next() {
                Some(given) => name = Some(given.clone()),
                None => return syntax_error(),
            },
            _ => return syntax_error(),
        }
    }
    if let Some(credentials) = credentials {
        if let Reply::Error(e) = auth(&credentials, s, shared) {
            return Reply::Error(e);
        }
    }
    if !s.authed {
        return Reply::Error("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time".into());
    }
    if let Some(name) = name {
        s.name = Some(name);
    }
    s.version = version;
    let status = node.status();
    let role = if status.leader == Some(status.id) {
        "master"
    } else {
        "replica"
    };
    Reply::Map(vec![
        (Reply::text("server"), Reply::text("redis")),
        (Reply::text("version"), Reply::text(REDIS_VERSION)),
        (Reply::text("proto"), Reply::Int(i64::from(version))),
        (Reply::text("id"), Reply::Int(s.id as i64)),
        (Reply::text("mode"), Reply::text("standalone")),
        (Reply::text("role"), Reply::text(role)),
        (Reply::text("modules"), Reply::Array(Vec::new())),
    ])
}

/// AUTH [user] password
fn auth(rest: &[Bytes], s: &mut Session, shared: &RedisShared) -> Reply {
    let Some(expected) = &shared.password else {
        return Reply::Error("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?".into());
    };
    let given = match rest {
        [pass] => pass,
        // Redis 6 ACLs: this store has only the default user.
        [user, pass] if user.as_ref() == b"default" => pass,
        [_, _] => {
            return Reply::Error(
                "WRONGPASS invalid username-password pair or user is disabled.".into(),
            )
        }
        _ => return wrong_args("AUTH"),
    };
    if given.as_ref() == expected.as_bytes() {
        s.authed = true;
        Reply::ok()
    } else {
        Reply::Error("WRONGPASS invalid username-password pair or user is disabled.".into())
    }
}

/// CLIENT SETNAME | GETNAME | ID | SETINFO
fn client(rest: &[Bytes], s: &mut Session) -> Reply {
    let Some((sub, args)) = rest.split_first() else {
        return wrong_args("CLIENT");
    };
    match (sub.to_ascii_uppercase().as_slice(), args) {
        (b"SETNAME", [name]) => {
            s.name = Some(name.clone());
            Reply::ok()
        }
        (b"GETNAME", []) => Reply::bulk_or_null(s.name.clone()),
        (b"ID", []) => Reply::Int(s.id as i64),
        (b"SETINFO", [_, _]) => Reply::ok(),
        _ => Reply::Error(format!(
            "ERR unknown subcommand '{}'",
            String::from_utf8_lossy(sub)
        )),
    }
}

/// INFO, from this node's status: server, replication, keyspace.
fn info(node: &NodeHandle, sections: &[Bytes]) -> Reply {
    let st = node.status();
    let role = if st.leader == Some(st.id) {
        "master"
    } else {
        "slave"
    };
    let leader = st
        .leader
        .and_then(|l| st.members.iter().find(|(id, _)| *id == l))
        .map(|(_, addr)| *addr);
    let server = format!(
        "# Server\r\nredis_version:{REDIS_VERSION}\r\nkv_version:{}\r\nredis_mode:standalone\r\nprocess_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{}\r\n",
        st.version,
        std::process::id(),
        st.client_addr.port(),
        st.uptime.as_secs(),
    );
    let mut text = format!(
        "# Replication\r\nrole:{role}\r\nkv_node_id:{}\r\nkv_term:{}\r\nkv_commit_index:{}\r\n",
        st.id, st.term, st.commit,
    );
    match (role, leader) {
        ("slave", Some(addr)) => text.push_str(&format!(
            "master_host:{}\r\nmaster_port:{}\r\nmaster_link_status:up\r\n",
            addr.ip(),
            addr.port()
        )),
        ("slave", None) => text.push_str("master_link_status:down\r\n"),
        _ => text.push_str(&format!(
            "connected_slaves:{}\r\n",
            st.members.len().saturating_sub(1)
        )),
    }
    let replication = text;
    let keyspace = format!("# Keyspace\r\ndb0:keys={},expires=0,avg_ttl=0\r\n", st.keys);
    // As Redis: the sections asked for (any case), all of them by default.
    let wanted = |name: &str| {
        sections.is_empty()
            || sections.iter().any(|s| {
                let s = s.to_ascii_lowercase();
                s == name.as_bytes() || matches!(s.as_slice(), b"all" | b"default" | b"everything")
            })
    };
    let parts: Vec<&str> = [
        ("server", server.as_str()),
        ("replication", replication.as_str()),
        ("keyspace", keyspace.as_str()),
    ]
    .into_iter()
    .filter(|(name, _)| wanted(name))
    .map(|(_, text)| text)
    .collect();
    Reply::text(parts.join("\r\n"))
}

/// The commands the node serves.
fn data_command(name: &str, rest: &[Bytes], cursors: &ScanCursors) -> Action {
    if let Some(action) = string_command(name, rest) {
        return action;
    }
    if let Some(action) = keyspace_command(name, rest, cursors) {
        return action;
    }
    match name {
        "EXPIRE" | "PEXPIRE" | "EXPIREAT" | "PEXPIREAT" | "TTL" | "PTTL" | "PERSIST" | "SETEX"
        | "PSETEX" | "GETEX" => Action::Local(no_expiry()),
        "GET" | "SET" | "SETNX" | "GETSET" | "MGET" | "MSET" | "MSETNX" | "DEL" | "UNLINK"
        | "EXISTS" | "INCR" | "DECR" | "INCRBY" | "DECRBY" | "APPEND" | "STRLEN" | "DBSIZE"
        | "SCAN" | "KEYS" | "CAS" => Action::Local(wrong_args(name)),
        _ => Action::Local(Reply::Error(format!(
            "ERR unknown command '{}', with args beginning with: {}",
            name.to_ascii_lowercase(),
            rest.iter()
                .take(3)
                .map(|a| format!("'{}'", String::from_utf8_lossy(a)))
                .collect::<Vec<_>>()
                .join(" ")
        ))),
    }
}

/// The commands on string values, with their arguments right; None
/// otherwise.
fn string_command(name: &str, rest: &[Bytes]) -> Option<Action> {
    let node = |op: ClientOp, render: Render| Some(Action::Node(op, render));
    let set_if = |key: &Bytes, value: &Bytes, condition, return_old| ClientOp::SetIf {
        key: key.clone(),
        value: value.clone(),
        condition,
        return_old,
    };
    let incr = |key: &Bytes, by| ClientOp::Incr {
        key: key.clone(),
        by,
    };
    match (name, rest) {
        ("GET", [key]) => node(ClientOp::Get { key: key.clone() }, Render::Value),
        ("SET", [key, value, opts @ ..]) => Some(set(key, value, opts)),
        ("SETNX", [k, v]) => node(set_if(k, v, SetCondition::IfAbsent, false), Render::Wrote),
        ("GETSET", [k, v]) => node(set_if(k, v, SetCondition::Always, true), Render::Old),
        ("MGET", keys) if !keys.is_empty() => node(
            ClientOp::MGet {
                keys: keys.to_vec(),
            },
            Render::Values,
        ),
        ("MSET", pairs) if !pairs.is_empty() && pairs.len() % 2 == 0 => node(
            ClientOp::MSet {
                pairs: pairs_of(pairs),
            },
            Render::Ok,
        ),
        ("MSETNX", pairs) if !pairs.is_empty() && pairs.len() % 2 == 0 => node(
            ClientOp::MSetNx {
                pairs: pairs_of(pairs),
            },
            Render::Int,
        ),
        ("INCR", [key]) => node(incr(key, 1), Render::Int),
        ("DECR", [key]) => node(incr(key, -1), Render::Int),
        ("INCRBY", [key, by]) => match int_arg(by) {
            Some(by) => node(incr(key, by), Render::Int),
            None => Some(Action::Local(not_integer())),
        },
        ("DECRBY", [key, by]) => match int_arg(by).map(i64::checked_neg) {
            Some(Some(by)) => node(incr(key, by), Render::Int),
            Some(None) => Some(Action::Local(Reply::Error(
                "ERR decrement would overflow".into(),
            ))),
            None => Some(Action::Local(not_integer())),
        },
        ("APPEND", [key, value]) => node(
            ClientOp::Append {
                key: key.clone(),
                value: value.clone(),
            },
            Render::Int,
        ),
        ("STRLEN", [key]) => node(ClientOp::StrLen { key: key.clone() }, Render::Int),
        ("CAS", [key, expected, new]) => node(
            ClientOp::Cas {
                key: key.clone(),
                expected: expected.clone(),
                new: new.clone(),
            },
            Render::Wrote,
        ),
        _ => None,
    }
}

/// The commands on the key space as a whole, with their arguments right;
/// None otherwise.
fn keyspace_command(name: &str, rest: &[Bytes], cursors: &ScanCursors) -> Option<Action> {
    let node = |op: ClientOp, render: Render| Some(Action::Node(op, render));
    match (name, rest) {
        ("DEL" | "UNLINK", keys) if !keys.is_empty() => node(
            ClientOp::DelMany {
                keys: keys.to_vec(),
            },
            Render::Int,
        ),
        ("EXISTS", keys) if !keys.is_empty() => node(
            ClientOp::Exists {
                keys: keys.to_vec(),
            },
            Render::Int,
        ),
        ("DBSIZE", []) => node(ClientOp::DbSize, Render::Int),
        ("SCAN", [cursor, opts @ ..]) => Some(scan(cursor, opts, cursors)),
        ("KEYS", [pattern]) if pattern.len() > MAX_PATTERN_BYTES => {
            Some(Action::Local(pattern_too_long()))
        }
        ("KEYS", [pattern]) => node(
            ClientOp::Keys {
                pattern: pattern.clone(),
            },
            Render::Keys,
        ),
        ("FLUSHDB" | "FLUSHALL", []) => node(ClientOp::Flush, Render::Ok),
        ("FLUSHDB" | "FLUSHALL", [mode])
            if mode.eq_ignore_ascii_case(b"ASYNC") || mode.eq_ignore_ascii_case(b"SYNC") =>
        {
            node(ClientOp::Flush, Render::Ok)
        }
        ("FLUSHDB" | "FLUSHALL", _) => Some(Action::Local(syntax_error())),
        _ => None,
    }
}

fn pairs_of(args: &[Bytes]) -> Vec<(Bytes, Bytes)> {
    args.chunks_exact(2)
        .filter_map(|p| match p {
            [k, v] => Some((k.clone(), v.clone())),
            _ => None,
        })
        .collect()
}

/// SET key value [NX | XX] [GET] (expiry options refused).
fn set(key: &Bytes, value: &Bytes, opts: &[Bytes]) -> Action {
    let (mut condition, mut return_old) = (SetCondition::Always, false);
    for opt in opts {
        match opt.to_ascii_uppercase().as_slice() {
            // As in Redis, a flag may repeat but NX and XX exclude each other.
            b"NX" if condition != SetCondition::IfPresent => condition = SetCondition::IfAbsent,
            b"XX" if condition != SetCondition::IfAbsent => condition = SetCondition::IfPresent,
            b"GET" => return_old = true,
            // Keeping a key's TTL: no key has one here.
            b"KEEPTTL" => {}
            b"EX" | b"PX" | b"EXAT" | b"PXAT" => return Action::Local(no_expiry()),
            _ => return Action::Local(syntax_error()),
        }
    }
    let op = if condition == SetCondition::Always && !return_old {
        ClientOp::Set {
            key: key.clone(),
            value: value.clone(),
        }
    } else {
        ClientOp::SetIf {
            key: key.clone(),
            value: value.clone(),
            condition,
            return_old,
        }
    };
    let render = if return_old {
        Render::Old
    } else {
        Render::OkOrNull
    };
    Action::Node(op, render)
}

/// SCAN cursor [MATCH pattern] [COUNT n] (TYPE string accepted).
fn scan(cursor: &Bytes, opts: &[Bytes], cursors: &ScanCursors) -> Action {
    let Some(cursor) = std::str::from_utf8(cursor)
        .ok()
        .and_then(|c| c.parse::<u64>().ok())
    else {
        return Action::Local(Reply::Error("ERR invalid cursor".into()));
    };
    let (mut pattern, mut count, mut render) = (None, 10usize, Render::Page);
    let mut it = opts.iter();
    while let Some(opt) = it.next() {
        match (opt.to_ascii_uppercase().as_slice(), it.next()) {
            (b"MATCH", Some(p)) if p.len() > MAX_PATTERN_BYTES => {
                return Action::Local(pattern_too_long())
            }
            (b"MATCH", Some(p)) => pattern = Some(p.clone()),
            (b"COUNT", Some(n)) => match int_arg(n) {
                Some(n) if n > 0 => {
                    count = usize::try_from(n)
                        .unwrap_or(MAX_SCAN_COUNT)
                        .min(MAX_SCAN_COUNT)
                }
                // Redis: a count below one is a syntax error.
                Some(_) => return Action::Local(syntax_error()),
                None => return Action::Local(not_integer()),
            },
            (b"TYPE", Some(t)) if t.eq_ignore_ascii_case(b"string") => render = Render::Page,
            (b"TYPE", Some(_)) => render = Render::EmptyPage,
            _ => return Action::Local(syntax_error()),
        }
    }
    Action::Node(
        ClientOp::Scan {
            from: cursors.resume(cursor),
            pattern,
            count,
        },
        render,
    )
}

/// A node's reply as the command's Redis reply.
fn render_reply(reply: ClientReply, render: Render, cursors: &ScanCursors) -> Reply {
    let count = |n: usize| Reply::Int(i64::try_from(n).unwrap_or(i64::MAX));
    match (reply, render) {
        (ClientReply::Value(v), _) => Reply::Bulk(v),
        (ClientReply::NotFound, Render::Value | Render::Old) => Reply::Null,
        (ClientReply::NotFound, Render::Wrote) => Reply::Int(0),
        (ClientReply::Ok, Render::Wrote) => Reply::Int(1),
        (ClientReply::Ok, _) => Reply::ok(),
        (ClientReply::NotSet, Render::Wrote) => Reply::Int(0),
        (ClientReply::NotSet, _) => Reply::Null,
        (ClientReply::CasFailed(_), _) => Reply::Int(0),
        (ClientReply::Old(v), _) => Reply::bulk_or_null(v),
        (ClientReply::Int(n), _) => Reply::Int(n),
        (ClientReply::Values(vs), _) => {
            Reply::Array(vs.into_iter().map(Reply::bulk_or_null).collect())
        }
        (ClientReply::Page { next, .. }, Render::EmptyPage) => Reply::Array(vec![
            Reply::text(next.map_or(0, |key| cursors.mint(key)).to_string()),
            Reply::Array(Vec::new()),
        ]),
        (ClientReply::Page { next, keys }, _) => Reply::Array(vec![
            Reply::text(next.map_or(0, |key| cursors.mint(key)).to_string()),
            Reply::Array(keys.into_iter().map(Reply::Bulk).collect()),
        ]),
        (ClientReply::Keys(keys), _) => Reply::Array(keys.into_iter().map(Reply::Bulk).collect()),
        (ClientReply::Refused(why), _) => Reply::Error(format!("ERR {why}")),
        (ClientReply::NoLeader, _) => try_again("no leader elected yet; retry"),
        (ClientReply::Redirect(addr), _) => try_again(&format!(
            "not the leader (forwarded once already); leader at {addr}"
        )),
        (ClientReply::Failed(kind), _) => match kind {
            // Surely not done: Redis clients retry on TRYAGAIN.
            FailKind::NotApplied | FailKind::Overloaded | FailKind::Unavailable => {
                try_again(kind.message())
            }
            FailKind::Unknown | FailKind::Timeout | FailKind::ShuttingDown => {
                Reply::Error(format!("ERR {}", kind.message()))
            }
        },
        (ClientReply::Status(_) | ClientReply::Session(_), _) => {
            Reply::Error("ERR no Redis form for this answer".into())
        }
        (ClientReply::NotFound, _) => count(0),
    }
}
