//! The client listener: accepts connections, tells the text protocol from
//! the binary one, and hands operations to the node's core task.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use super::binary;
use super::text::{encode_response, parse_request, LineError, LineReader, Request, Response};
use super::ClientLimits;
use crate::node::{ClientOp, ClientReply, FailKind, NodeHandle};

/// A bound client listener, ready to `run`.
pub struct ClientServer {
    listener: TcpListener,
    limits: ClientLimits,
    node: NodeHandle,
    shutdown: watch::Receiver<bool>,
    connections: Arc<Semaphore>,
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
        Ok(ClientServer {
            listener,
            limits,
            node,
            shutdown,
            connections,
        })
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
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            };
            let Ok(permit) = self.connections.clone().try_acquire_owned() else {
                tracing::warn!(%peer, max = self.limits.max_connections, "refusing client: too many connections");
                tokio::spawn(refuse(stream));
                continue;
            };
            let limits = self.limits.clone();
            let node = self.node.clone();
            let shutdown = self.shutdown.clone();
            tokio::spawn(async move {
                serve(stream, &limits, &node, shutdown).await;
                drop(permit);
            });
        }
    }
}

/// Tells the protocols apart by the first byte (a binary connection starts
/// with `binary::MAGIC`, whose first byte is NUL) and serves the connection.
async fn serve(
    stream: TcpStream,
    limits: &ClientLimits,
    node: &NodeHandle,
    shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut first = [0u8; 1];
    match tokio::time::timeout(limits.idle_timeout, reader.read(&mut first)).await {
        Ok(Ok(1)) => {}
        _ => return,
    }
    if first[0] != binary::MAGIC[0] {
        serve_text(reader, writer, limits, node, shutdown, &first).await;
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
    binary::serve_binary(reader, writer, limits, node, shutdown).await;
}

async fn refuse(mut stream: TcpStream) {
    let _ = stream.write_all(b"ERR too many connections\n").await;
    let _ = stream.flush().await;
}

/// Serves one text-protocol connection until EOF, an over-long line, an
/// idle timeout, a write error or shutdown.
pub async fn serve_text<R, W>(
    reader: R,
    mut writer: W,
    limits: &ClientLimits,
    node: &NodeHandle,
    mut shutdown: watch::Receiver<bool>,
    initial: &[u8],
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut lines = LineReader::with_initial(reader, limits.text.max_line_bytes, initial);
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
            Ok(Ok(Some(line))) => (answer(&line, limits, node).await, false),
        };
        out.clear();
        encode_response(&response, &mut out);
        if writer.write_all(&out).await.is_err() || writer.flush().await.is_err() || close {
            return;
        }
    }
}

/// Parses one request line and gets its answer.
async fn answer(line: &[u8], limits: &ClientLimits, node: &NodeHandle) -> Response {
    let op = match parse_request(line, &limits.text) {
        Err(e) => return Response::Err(e.to_string()),
        Ok(Request::Ping) => return Response::Pong,
        Ok(Request::Get { key }) => ClientOp::Get { key },
        Ok(Request::Set { key, value }) => ClientOp::Set { key, value },
        Ok(Request::Del { key }) => ClientOp::Del { key },
        Ok(Request::Cas { key, expected, new }) => ClientOp::Cas { key, expected, new },
        Ok(Request::MSet { pairs }) => ClientOp::MSet { pairs },
    };
    match tokio::time::timeout(limits.request_timeout, node.call(op)).await {
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
        ClientReply::Failed(kind) => Response::Err(
            match kind {
                FailKind::NotApplied => "not applied: leader changed, safe to retry",
                FailKind::Unknown => "outcome unknown: leadership lost",
                FailKind::Overloaded => "overloaded, retry later",
                FailKind::Timeout => "timeout: outcome unknown",
                FailKind::ShuttingDown => "shutting down: outcome unknown",
                FailKind::Unavailable => super::binary::UNAVAILABLE_MESSAGE,
            }
            .into(),
        ),
    }
}
