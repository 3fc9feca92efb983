//! The client listener: accepts connections, tells the text protocol, the
//! binary one and Redis's RESP apart by the first byte, and hands operations to the node's core task.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use super::binary;
use super::budget::{ConnectionBudget, MemoryBudget};
use super::redis::RedisShared;
use super::text::{encode_response, parse_tagged, LineError, LineReader, Request, Response};
use super::ClientLimits;
use crate::api::{ClientOp, ClientReply, NodeHandle, SessionTag};
use crate::log_limit::LogLimiter;

/// A bound client listener, ready to `run`.
pub struct ClientServer {
    listener: TcpListener,
    limits: ClientLimits,
    node: NodeHandle,
    shutdown: watch::Receiver<bool>,
    connections: Arc<Semaphore>,
    /// Connections over the limit being told so (beyond these, one is
    /// closed at once: telling takes a task, a socket and, with TLS, a
    /// handshake each).
    refusing: Arc<Semaphore>,
    budget: MemoryBudget,
    refusals: Arc<LogLimiter>,
    /// What Redis connections share.
    redis: Arc<RedisShared>,
    /// TLS on this port (off: plain TCP).
    #[cfg(not(madsim))]
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl ClientServer {
    /// Binds the client port.
    pub async fn bind(
        addr: SocketAddr,
        limits: ClientLimits,
        node: NodeHandle,
        shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let connections = Arc::new(Semaphore::new(limits.max_connections));
        let budget = MemoryBudget::new(limits.max_request_bytes);
        let redis = RedisShared::new(limits.redis_password.clone());
        Ok(ClientServer {
            listener,
            limits,
            node,
            shutdown,
            connections,
            refusing: Arc::new(Semaphore::new(REFUSALS_TOLD_AT_ONCE)),
            budget,
            refusals: Arc::new(LogLimiter::new(REFUSAL_LOG_EVERY)),
            redis,
            #[cfg(not(madsim))]
            tls: None,
        })
    }

    /// Serves clients over TLS with the node's `tls` (plain TCP with
    /// `None`); a follower then forwards Redis commands to the leader over
    /// TLS too, as itself.
    #[cfg(not(madsim))]
    pub fn with_tls(mut self, tls: Option<&crate::tls::NodeTls>) -> Self {
        self.tls = tls.map(|t| t.client_acceptor.clone());
        self.redis = RedisShared::forwarding_over(
            self.limits.redis_password.clone(),
            tls.map(|t| t.peer_connector.clone()),
        );
        self
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| ([0, 0, 0, 0], 0).into())
    }

    /// Accepts connections until shutdown.
    pub async fn run(mut self) {
        loop {
            let accepted = tokio::select! {
                biased;
                a = self.listener.accept() => a,
                _ = self.shutdown.changed() => return,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    if let Some(held_back) = self.refusals.allow("accept failed") {
                        tracing::warn!(error = %e, held_back, "accept failed");
                    }
                    // Out of file descriptors, say: do not spin.
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let permit = self.connections.clone().try_acquire_owned().ok();
            let open = permit.as_ref().map(|_| OpenConnection::new(&self.node));
            let mut telling = None;
            if permit.is_none() {
                self.node.metrics().client_refused("too_many_connections");
                if let Some(held_back) = self.refusals.allow("too many connections") {
                    tracing::warn!(%peer, max = self.limits.max_connections, held_back, "refusing client: too many connections");
                }
                telling = self.refusing.clone().try_acquire_owned().ok();
                if telling.is_none() {
                    // Enough refusals under way: this one is closed unsaid.
                    drop(stream);
                    continue;
                }
            }
            let limits = self.limits.clone();
            let node = self.node.clone();
            let shutdown = self.shutdown.clone();
            let budget = self.budget.connection();
            let redis = self.redis.clone();
            #[cfg(not(madsim))]
            let tls = self.tls.clone();
            #[cfg(not(madsim))]
            let refusals = self.refusals.clone();
            tokio::spawn(async move {
                let _open = open;
                let _telling = telling;
                #[cfg(not(madsim))]
                if let Some(tls) = tls {
                    if !starts_tls(&stream, limits.write_timeout).await {
                        // A plain-text client: tell it in words it can read.
                        return refuse_plain(stream, TLS_REQUIRED, limits.write_timeout).await;
                    }
                    let handshake = tls.accept(stream).into_fallible();
                    match tokio::time::timeout(limits.write_timeout, handshake).await {
                        Ok(Ok(stream)) => match permit {
                            Some(_) => {
                                serve(stream, &limits, &node, &budget, shutdown, &redis).await
                            }
                            None => refuse(stream, limits.write_timeout).await,
                        },
                        Ok(Err((e, mut stream))) => {
                            node.metrics().client_refused("tls_handshake");
                            if let Some(held_back) = refusals.allow("TLS handshake failed") {
                                tracing::warn!(%peer, held_back, error = %e, "refusing client: TLS handshake failed");
                            }
                            // Let the alert reach the client before the close.
                            let _ = stream.shutdown().await;
                            drain(&mut stream).await;
                        }
                        Err(_) => {}
                    }
                    return;
                }
                match permit {
                    Some(_) => serve(stream, &limits, &node, &budget, shutdown, &redis).await,
                    None => refuse(stream, limits.write_timeout).await,
                }
            });
        }
    }
}

/// Counts an open client connection (metrics and status) while it lives.
struct OpenConnection(NodeHandle);

impl OpenConnection {
    fn new(node: &NodeHandle) -> Self {
        node.metrics().client_connections.inc();
        node.connection_opened(true);
        OpenConnection(node.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.metrics().client_connections.dec();
        self.0.connection_opened(false);
    }
}

/// Tells the protocols apart by the first byte (a binary connection starts
/// with `binary::MAGIC`, whose first byte is NUL) and serves the connection.
async fn serve<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: S,
    limits: &ClientLimits,
    node: &NodeHandle,
    budget: &ConnectionBudget,
    shutdown: watch::Receiver<bool>,
    redis: &Arc<RedisShared>,
) {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut first = [0u8; 1];
    match tokio::time::timeout(limits.idle_timeout, reader.read(&mut first)).await {
        Ok(Ok(1)) => {}
        _ => return,
    }
    if first[0] == b'*' {
        let shared = redis.clone();
        super::redis::serve_redis(
            reader, writer, limits, node, budget, shutdown, &first, shared,
        )
        .await;
        return;
    }
    if first[0] != binary::MAGIC[0] {
        serve_text(reader, writer, limits, node, budget, shutdown, &first).await;
        return;
    }
    let mut rest = [0u8; 3];
    let magic_ok = matches!(
        tokio::time::timeout(limits.idle_timeout, reader.read_exact(&mut rest)).await,
        Ok(Ok(_))
    ) && rest == binary::MAGIC[1..];
    if !magic_ok {
        let _ = writer
            .write_all(b"ERR invalid byte 0x00 in request (use the binary protocol)\n")
            .await;
        let _ = writer.flush().await;
        return;
    }
    binary::serve_binary(reader, writer, limits, node, budget, shutdown).await;
}

/// Whether the client's first byte opens a TLS handshake record (a plain
/// text or binary client sends something else).
#[cfg(not(madsim))]
async fn starts_tls(stream: &tokio::net::TcpStream, wait: std::time::Duration) -> bool {
    const TLS_HANDSHAKE_RECORD: u8 = 0x16;
    let mut first = [0u8; 1];
    matches!(
        tokio::time::timeout(wait, stream.peek(&mut first)).await,
        Ok(Ok(1)) if first[0] == TLS_HANDSHAKE_RECORD
    )
}

/// What a client that does not speak TLS reads from a port that requires it.
#[cfg(not(madsim))]
pub const TLS_REQUIRED: &[u8] = b"ERR this port requires TLS (see --tls-ca)\n";

/// Tells a plain client `why` before closing.
#[cfg(not(madsim))]
async fn refuse_plain(
    mut stream: tokio::net::TcpStream,
    why: &[u8],
    write_timeout: std::time::Duration,
) {
    let say = async {
        stream.write_all(why).await?;
        stream.shutdown().await
    };
    if matches!(tokio::time::timeout(write_timeout, say).await, Ok(Ok(()))) {
        drain(&mut stream).await;
    }
}

/// Tells a refused client why before closing (both protocols read it: a
/// binary client sees a line where it expected a frame).
async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    write_timeout: std::time::Duration,
) {
    let say = async {
        stream.write_all(TOO_MANY_CONNECTIONS).await?;
        stream.shutdown().await
    };
    if !matches!(tokio::time::timeout(write_timeout, say).await, Ok(Ok(()))) {
        return;
    }
    drain(&mut stream).await;
}

/// Reads and discards what the client already sent, briefly and boundedly,
/// until it closes its side: closing with unread input would reset the
/// connection and could discard our last line before the client reads it.
pub(crate) async fn drain<S: AsyncRead + Unpin>(stream: &mut S) {
    let drain = async {
        let mut sink = [0u8; 4096];
        let mut left = REFUSAL_DRAIN_BYTES;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(REFUSAL_DRAIN_TIME, drain).await;
}

/// How long a refused connection is drained before it is dropped.
const REFUSAL_DRAIN_TIME: std::time::Duration = std::time::Duration::from_millis(500);

/// At most this many bytes are drained from a refused connection.
const REFUSAL_DRAIN_BYTES: usize = 64 << 10;

/// What a client refused for lack of connection slots reads before the close.
pub const TOO_MANY_CONNECTIONS: &[u8] = b"ERR too many connections\n";

/// Refusals of each kind are logged at most this often.
const REFUSAL_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Connections over the limit told so at once; more are closed unsaid.
const REFUSALS_TOLD_AT_ONCE: usize = 64;

/// Serves one text-protocol connection until EOF, an over-long line, an
/// idle timeout, a write error or shutdown.
pub async fn serve_text<R, W>(
    reader: R,
    mut writer: W,
    limits: &ClientLimits,
    node: &NodeHandle,
    budget: &ConnectionBudget,
    mut shutdown: watch::Receiver<bool>,
    initial: &[u8],
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut lines = LineReader::with_initial(reader, limits.text.max_line_bytes, initial)
        .charging(budget.clone());
    let mut out = Vec::with_capacity(256);
    loop {
        let next = tokio::select! {
            biased;
            n = tokio::time::timeout(limits.idle_timeout, lines.next_line()) => n,
            _ = shutdown.changed() => return,
        };
        let (response, close) = match next {
            Err(_) => (Response::Err("idle timeout".into()), true),
            Ok(Ok(None)) => return,
            Ok(Err(LineError::TooLong { .. })) => (
                Response::Err(format!(
                    "line too long (max {} bytes)",
                    limits.text.max_line_bytes
                )),
                true,
            ),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "client read failed");
                return;
            }
            Ok(Ok(Some(line))) => {
                // The request holds its bytes against the node's budget until answered.
                let _charge = budget.charge(line.len()).await;
                (answer(&line, limits, node).await, false)
            }
        };
        out.clear();
        encode_response(&response, &mut out);
        let write = async {
            writer.write_all(&out).await?;
            writer.flush().await
        };
        let written = tokio::time::timeout(limits.write_timeout, write).await;
        if !matches!(written, Ok(Ok(()))) || close {
            return;
        }
        if out.capacity() > 64 * 1024 {
            out = Vec::with_capacity(256);
        }
    }
}

/// Parses one request line and gets its answer.
async fn answer(line: &[u8], limits: &ClientLimits, node: &NodeHandle) -> Response {
    let tagged = match parse_tagged(line, &limits.text) {
        Err(e) => return Response::Err(e.to_string()),
        Ok(t) => t,
    };
    let op = match tagged.request {
        Request::Ping => return Response::Pong,
        Request::Get { key } => ClientOp::Get { key },
        Request::Set { key, value } => ClientOp::Set { key, value },
        Request::Del { key } => ClientOp::Del { key },
        Request::Cas { key, expected, new } => ClientOp::Cas { key, expected, new },
        Request::MSet { pairs } => ClientOp::MSet { pairs },
        Request::Incr { key, by } => ClientOp::Incr { key, by },
        Request::OpenSession => ClientOp::OpenSession,
        Request::Status => ClientOp::Status,
        Request::TransferLeader { to } => ClientOp::TransferLeader { to },
    };
    let session = tagged
        .session
        .map(|(session, seq, acked_below)| SessionTag {
            session,
            seq,
            acked_below,
        });
    match tokio::time::timeout(limits.request_timeout, node.call_in(op, session)).await {
        Ok(reply) => reply_to_text(reply),
        Err(_) => Response::Err("timeout: outcome unknown".into()),
    }
}

/// The text protocol's rendering of a node's reply.
pub fn reply_to_text(reply: ClientReply) -> Response {
    match reply {
        ClientReply::Ok => Response::Ok,
        ClientReply::Value(v) => Response::Value(v).for_text_line(),
        ClientReply::NotFound => Response::NotFound,
        ClientReply::CasFailed(current) => Response::Fail(current).for_text_line(),
        ClientReply::Redirect(addr) => Response::Redirect(addr.to_string()),
        ClientReply::NoLeader => Response::Err("no leader".into()),
        ClientReply::Failed(kind) => Response::Err(kind.message().into()),
        ClientReply::Status(status) => Response::Status(status.fields()),
        ClientReply::Refused(why) => Response::Err(why),
        ClientReply::Int(n) => Response::Int(n),
        ClientReply::Session(id) => Response::Session(id),
        ClientReply::Old(Some(v)) => Response::Value(v).for_text_line(),
        ClientReply::Old(None) => Response::NotFound,
        ClientReply::NotSet
        | ClientReply::Values(_)
        | ClientReply::Page { .. }
        | ClientReply::Keys(_) => Response::Err("no text form for this answer".into()),
    }
}
