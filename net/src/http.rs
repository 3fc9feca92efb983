//! A node's HTTP endpoint for operators (`--http-addr`): `GET /metrics`
//! (OpenMetrics text, which Prometheus scrapes), `GET /health` (200 only
//! when the node sees a leader and, if it leads, a majority answered it
//! recently; 503 with the reason otherwise) and `GET /status` (JSON).
//!
//! A deliberately small HTTP/1.1 server: one request per connection,
//! headers up to 8 KiB read within 5 s, only GET, answered and closed.
//! Nothing here reaches the Raft core; it reads the status board and the
//! metrics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::api::NodeHandle;
use crate::log_limit::LogLimiter;
use crate::metrics::Metrics;
use crate::status::NodeStatus;
use crate::transport::TransportProbe;

/// Longest request head accepted.
const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Time a client has to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 64;

/// What the endpoint reads from.
#[derive(Clone)]
pub struct HttpState {
    /// The node (its status board).
    pub node: NodeHandle,
    /// Its metrics.
    pub metrics: Arc<Metrics>,
    /// Its transport's counters.
    pub transport: TransportProbe,
    /// A leader is healthy if a majority answered within this long.
    pub quorum_window: Duration,
}

/// A bound HTTP endpoint, ready to `run`.
pub struct HttpServer {
    listener: TcpListener,
    state: HttpState,
    shutdown: watch::Receiver<bool>,
}

impl HttpServer {
    /// Binds `addr`.
    pub async fn bind(
        addr: SocketAddr,
        state: HttpState,
        shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<Self> {
        Ok(HttpServer {
            listener: TcpListener::bind(addr).await?,
            state,
            shutdown,
        })
    }

    /// The address bound.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves until shutdown.
    pub async fn run(mut self) {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let errors = LogLimiter::new(Duration::from_secs(10));
        loop {
            let accepted = tokio::select! {
                biased;
                _ = self.shutdown.changed() => return,
                a = self.listener.accept() => a,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    if let Some(held_back) = errors.allow("accept") {
                        tracing::warn!(error = %e, held_back, "http: accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let state = self.state.clone();
            tokio::spawn(async move {
                serve(stream, &state).await;
                drop(permit);
            });
        }
    }
}

/// Reads one request and answers it.
async fn serve(mut stream: TcpStream, state: &HttpState) {
    let head = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(Some(head)) => head,
        _ => return,
    };
    let (status, content_type, body) = route(&head, state);
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(READ_TIMEOUT, async {
        stream.write_all(response.as_bytes()).await?;
        stream.flush().await?;
        stream.shutdown().await
    })
    .await;
}

/// Reads up to the blank line ending the request head (None: closed, too
/// long or not text).
async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() + n > MAX_HEAD_BYTES {
            return None;
        }
        buf.extend_from_slice(chunk.get(..n)?);
    }
    String::from_utf8(buf).ok()
}

/// The answer to a request head: status line, content type, body.
fn route(head: &str, state: &HttpState) -> (&'static str, &'static str, String) {
    let mut words = head.lines().next().unwrap_or_default().split_whitespace();
    let (method, path) = (
        words.next().unwrap_or_default(),
        words.next().unwrap_or("/"),
    );
    let path = path.split('?').next().unwrap_or(path);
    if method != "GET" {
        return ("405 Method Not Allowed", TEXT, "only GET\n".into());
    }
    let status = state.node.status();
    match path {
        "/metrics" => {
            let probe = &state.transport;
            state
                .metrics
                .refresh(&status, &probe.stats(), &probe.queue_depths());
            ("200 OK", OPENMETRICS, state.metrics.encode())
        }
        "/health" => match status.health(state.quorum_window) {
            Ok(()) => ("200 OK", TEXT, "ok\n".into()),
            Err(why) => ("503 Service Unavailable", TEXT, format!("{why}\n")),
        },
        "/status" => ("200 OK", JSON, status_json(&status)),
        _ => (
            "404 Not Found",
            TEXT,
            "try /metrics, /health or /status\n".into(),
        ),
    }
}

const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The status as one JSON object (numbers as numbers, the rest as strings).
pub fn status_json(status: &NodeStatus) -> String {
    let fields = status.fields();
    let mut out = String::from("{");
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!("\"{k}\":"));
        let numeric = !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) && k != "version";
        match (k.as_str(), numeric) {
            ("disk_ok", _) => out.push_str(v),
            (_, true) => out.push_str(v),
            _ => out.push_str(&json_string(v)),
        }
    }
    out.push_str("}\n");
    out
}

/// `s` as a JSON string literal.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_escape_what_json_requires() {
        assert_eq!(json_string("a\"b\\c\nd"), "\"a\\\"b\\\\c\\u000ad\"");
    }
}
