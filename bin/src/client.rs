//! A blocking text-protocol client for `kv-cli`: it finds the leader by
//! following REDIRECT, and retries what is safe to retry (no leader yet,
//! a node down) until a deadline.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use kv_net::client::text::{parse_response, Response};

/// Most REDIRECTs followed for one request before giving up.
const MAX_REDIRECTS: usize = 8;

/// A connection to the cluster that follows the leader.
pub struct Client {
    addrs: Vec<SocketAddr>,
    current: usize,
    conn: Option<(SocketAddr, BufReader<TcpStream>)>,
    timeout: Duration,
}

/// Why a request could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No server answered before the deadline.
    #[error("no server reachable at {addrs} within {timeout:?} (last error: {last})")]
    Unreachable {
        /// The addresses tried.
        addrs: String,
        /// The deadline.
        timeout: Duration,
        /// The last failure.
        last: String,
    },
    /// The request was sent but no answer came back: it may or may not have been applied.
    #[error(
        "connection to {addr} lost after sending the request; it may or may not have been applied"
    )]
    Lost {
        /// The server.
        addr: SocketAddr,
    },
}

impl Client {
    /// A client for `addrs` (host:port each) with an overall per-request `timeout`.
    pub fn new(addrs: &[String], timeout: Duration) -> Result<Self> {
        let mut resolved = Vec::new();
        for a in addrs.iter().map(|a| a.trim()).filter(|a| !a.is_empty()) {
            let addr = a
                .to_socket_addrs()
                .with_context(|| format!("cannot resolve {a:?}"))?
                .next()
                .ok_or_else(|| anyhow!("{a:?} resolves to no address"))?;
            resolved.push(addr);
        }
        if resolved.is_empty() {
            bail!("no server address given");
        }
        Ok(Client {
            addrs: resolved,
            current: 0,
            conn: None,
            timeout,
        })
    }

    /// The address currently connected to (or to be tried next).
    pub fn current_addr(&self) -> SocketAddr {
        self.conn
            .as_ref()
            .map_or(self.addrs[self.current], |(a, _)| *a)
    }

    /// Sends one request line and returns the final response line: REDIRECTs
    /// are followed, `ERR no leader` and unreachable servers retried until
    /// the timeout.
    pub fn request(&mut self, line: &str) -> Result<String, ClientError> {
        let deadline = Instant::now() + self.timeout;
        let mut redirects = 0;
        let mut backoff = Duration::from_millis(20);
        let mut last = String::from("none");
        loop {
            if Instant::now() >= deadline {
                return Err(self.unreachable(last));
            }
            match self.exchange(line, deadline) {
                Ok(resp) => match parse_response(resp.as_bytes()) {
                    Ok(Response::Redirect(to)) if redirects < MAX_REDIRECTS => {
                        redirects += 1;
                        self.switch_to(&to);
                        continue;
                    }
                    Ok(Response::Err(msg))
                        if msg == "no leader" || msg.starts_with("not applied") =>
                    {
                        last = format!("ERR {msg}");
                    }
                    _ => return Ok(resp),
                },
                Err(Attempt::Unreachable(e)) => {
                    last = e;
                    self.conn = None;
                    self.current = (self.current + 1) % self.addrs.len();
                }
                Err(Attempt::Lost(addr)) => {
                    self.conn = None;
                    return Err(ClientError::Lost { addr });
                }
            }
            std::thread::sleep(backoff.min(deadline.saturating_duration_since(Instant::now())));
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    fn unreachable(&self, last: String) -> ClientError {
        let addrs = self
            .addrs
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(",");
        ClientError::Unreachable {
            addrs,
            timeout: self.timeout,
            last,
        }
    }

    fn switch_to(&mut self, to: &str) {
        self.conn = None;
        if let Ok(Some(addr)) = to.to_socket_addrs().map(|mut a| a.next()) {
            match self.addrs.iter().position(|a| *a == addr) {
                Some(i) => self.current = i,
                None => {
                    self.addrs.push(addr);
                    self.current = self.addrs.len() - 1;
                }
            }
        }
    }

    fn exchange(&mut self, line: &str, deadline: Instant) -> Result<String, Attempt> {
        let remaining = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        if self.conn.is_none() {
            let addr = self.addrs[self.current];
            let stream = TcpStream::connect_timeout(&addr, remaining.min(Duration::from_secs(1)))
                .map_err(|e| Attempt::Unreachable(format!("{addr}: {e}")))?;
            let _ = stream.set_nodelay(true);
            self.conn = Some((addr, BufReader::new(stream)));
        }
        let Some((addr, reader)) = self.conn.as_mut() else {
            return Err(Attempt::Unreachable("not connected".into()));
        };
        let addr = *addr;
        let stream = reader.get_mut();
        let _ = stream.set_read_timeout(Some(remaining));
        let mut out = line.trim_end_matches(['\r', '\n']).as_bytes().to_vec();
        out.push(b'\n');
        // A failed write on a kept connection (the server closed it) means
        // nothing was sent: reconnect and try again.
        if stream
            .write_all(&out)
            .and_then(|()| stream.flush())
            .is_err()
        {
            return Err(Attempt::Unreachable(format!("{addr}: connection closed")));
        }
        let mut resp = String::new();
        match reader.read_line(&mut resp) {
            Ok(n) if n > 0 && resp.ends_with('\n') => {
                Ok(resp.trim_end_matches(['\r', '\n']).to_string())
            }
            _ => Err(Attempt::Lost(addr)),
        }
    }
}

enum Attempt {
    /// Nothing was sent; safe to try elsewhere.
    Unreachable(String),
    /// Sent, no answer.
    Lost(SocketAddr),
}

/// Whether a response line means the request failed (for exit codes).
pub fn is_error(resp: &str) -> bool {
    resp.starts_with("ERR")
}
