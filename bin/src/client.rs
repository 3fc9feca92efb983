//! A blocking client for `kv-cli` and the tests, speaking either protocol:
//! it finds the leader by following REDIRECT, and retries what is safe to
//! retry (no leader yet, a node down) until a deadline. Requests and answers
//! use the text codec's types whichever protocol carries them.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use kv_net::client::binary::MAGIC;
use kv_net::client::retry::{text_verdict, Endpoints, Verdict};
use kv_net::client::text::{encode_request, encode_response, parse_response, Request, Response};
use kv_net::frame::encode_frame;
use kv_proto::client as pb;
use kv_proto::prost::Message as _;

/// Which wire protocol a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// Length-prefixed protobuf frames (any bytes in keys and values).
    Binary,
    /// One line per request.
    Text,
}

/// Largest response frame accepted.
const MAX_FRAME_BYTES: usize = 64 << 20;

/// Most REDIRECTs followed for one request before giving up.
const MAX_REDIRECTS: usize = 8;

/// A connection to the cluster that follows the leader.
pub struct Client {
    /// The nodes, and the one to talk to (the leader, once found).
    endpoints: Endpoints,
    conn: Option<(SocketAddr, BufReader<Stream>)>,
    timeout: Duration,
    protocol: Protocol,
    next_id: u64,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Whether writes go in an exactly-once session.
    sessions: bool,
    /// The session writes go in, once opened.
    session: Option<Session>,
}

/// An open exactly-once session: its id and the next write's number.
#[derive(Debug, Clone, Copy)]
struct Session {
    id: u64,
    next_seq: u64,
}

/// A write's session tag: `(session, seq, acked_below)`.
type Tag = (u64, u64, u64);

/// One connection to a node, plain or over TLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Stream {
    /// Connects to `addr`, with the TLS handshake done when `tls` is given
    /// (so a refused certificate is reported as such, not as a lost answer).
    fn open(
        addr: SocketAddr,
        timeout: Duration,
        tls: Option<&Arc<rustls::ClientConfig>>,
    ) -> Result<Stream, Attempt> {
        let mut sock = TcpStream::connect_timeout(&addr, timeout.min(Duration::from_secs(1)))
            .map_err(|e| Attempt::Unreachable(format!("{addr}: {e}")))?;
        let _ = sock.set_nodelay(true);
        let Some(tls) = tls else {
            return Ok(Stream::Plain(sock));
        };
        let _ = sock.set_read_timeout(Some(timeout));
        let name = kv_net::tls::server_name(addr);
        let mut conn = rustls::ClientConnection::new(tls.clone(), name)
            .map_err(|e| Attempt::Refused(format!("{addr}: TLS: {e}")))?;
        while conn.is_handshaking() {
            conn.complete_io(&mut sock).map_err(|e| {
                let why = format!("{addr}: TLS handshake failed: {e}");
                match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                    Some(_) => Attempt::Refused(why),
                    None => Attempt::Unreachable(why),
                }
            })?;
        }
        Ok(Stream::Tls(Box::new(rustls::StreamOwned::new(conn, sock))))
    }

    /// Why a write failed: over TLS, the server may have refused this
    /// client's certificate at the end of the handshake (TLS 1.3 tells the
    /// client only afterwards), and its alert says so.
    fn why_closed(&mut self, addr: SocketAddr) -> Attempt {
        if let Stream::Tls(tls) = self {
            let _ = tls
                .get_ref()
                .set_read_timeout(Some(Duration::from_millis(200)));
            if let Err(e) = tls.read(&mut [0u8; 1]) {
                if let refused @ Attempt::Refused(_) = lost_or_refused(addr, &e) {
                    return refused;
                }
            }
        }
        Attempt::Unreachable(format!("{addr}: connection closed"))
    }

    fn socket(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
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
    /// The server's answer could not be understood.
    #[error("unintelligible answer: {0}")]
    Protocol(String),
    /// TLS refused the connection (this client's certificate, or the
    /// node's); nothing was sent.
    #[error("{0}")]
    Refused(String),
    /// Nodes answered, but none knew a leader before the deadline.
    #[error("no leader: the cluster answered but elected no leader within {timeout:?} (is a majority of nodes up?)")]
    NoLeader {
        /// The deadline.
        timeout: Duration,
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
    /// A text-protocol client for `addrs` (host:port each) with an overall
    /// per-request `timeout`.
    pub fn new(addrs: &[String], timeout: Duration) -> Result<Self> {
        Self::with_protocol(addrs, timeout, Protocol::Text)
    }

    /// A client speaking `protocol`.
    pub fn with_protocol(addrs: &[String], timeout: Duration, protocol: Protocol) -> Result<Self> {
        let resolved = resolve_addrs(addrs)?;
        let endpoints = Endpoints::new(resolved, 0).context("no node address given")?;
        Ok(Client {
            endpoints,
            conn: None,
            timeout,
            protocol,
            next_id: 1,
            tls: None,
            sessions: false,
            session: None,
        })
    }

    /// Sends every write in an exactly-once session (opened with the first
    /// write): a write whose answer was lost is sent again, to the same or
    /// another node, with the same number, and the cluster applies it at
    /// most once, so `call` gives a definite answer where it would
    /// otherwise report [`ClientError::Lost`].
    pub fn with_sessions(mut self) -> Self {
        self.sessions = true;
        self
    }

    /// Speaks TLS with `config` (trusting the cluster CA, and presenting a
    /// client certificate if the config has one).
    pub fn with_tls(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// The address currently connected to (or to be tried next).
    pub fn current_addr(&self) -> SocketAddr {
        self.conn
            .as_ref()
            .map_or(self.endpoints.current(), |(a, _)| *a)
    }

    /// Sends one request and returns the final answer: REDIRECTs are
    /// followed; what surely did not happen (no leader, not applied,
    /// overloaded, a node whose disk failed) and unreachable servers are
    /// retried until the timeout, by the rule every client of the store
    /// follows (`kv_net::client::retry`). With sessions on, a write whose answer was lost is retried
    /// too (see [`Client::with_sessions`]).
    pub fn call(&mut self, req: &Request) -> Result<Response, ClientError> {
        if !(self.sessions && is_write(req)) {
            return self.call_tagged(req, None);
        }
        let session = self.open_session()?;
        let tag = (session.id, session.next_seq, session.next_seq);
        let resp = self.call_tagged(req, Some(tag));
        if let Some(open) = self.session.as_mut() {
            open.next_seq += 1;
        }
        match resp {
            // The session expired while idle and this write was never
            // applied (its first attempt was refused): a new one serves.
            Ok(Response::Err(msg)) if msg == kv_engine::kv::NO_SESSION => {
                self.session = None;
                let session = self.open_session()?;
                let tag = (session.id, session.next_seq, session.next_seq);
                let resp = self.call_tagged(req, Some(tag));
                if let Some(open) = self.session.as_mut() {
                    open.next_seq += 1;
                }
                resp
            }
            other => other,
        }
    }

    /// The open session, opening one if there is none yet.
    fn open_session(&mut self) -> Result<Session, ClientError> {
        if let Some(session) = self.session {
            return Ok(session);
        }
        match self.call_tagged(&Request::OpenSession, None)? {
            Response::Session(id) => {
                let session = Session { id, next_seq: 1 };
                self.session = Some(session);
                Ok(session)
            }
            other => Err(ClientError::Protocol(format!(
                "opening a session was answered {other:?}"
            ))),
        }
    }

    /// [`Client::call`] for one request with its session tag, if any. A
    /// tagged write whose answer was lost is sent again (to the next node)
    /// until the deadline: the session makes the repeat harmless.
    fn call_tagged(&mut self, req: &Request, tag: Option<Tag>) -> Result<Response, ClientError> {
        let deadline = Instant::now() + self.timeout;
        let mut redirects = 0;
        let mut backoff = Duration::from_millis(20);
        let mut last = String::from("none");
        let mut lost = None;
        loop {
            if Instant::now() >= deadline {
                if let Some(addr) = lost {
                    return Err(ClientError::Lost { addr });
                }
                if last == "ERR no leader" {
                    return Err(ClientError::NoLeader {
                        timeout: self.timeout,
                    });
                }
                return Err(self.unreachable(last));
            }
            match self.exchange(req, tag, deadline) {
                Ok(Response::Redirect(to)) if redirects < MAX_REDIRECTS => {
                    redirects += 1;
                    self.switch_to(&to);
                    continue;
                }
                Ok(Response::Err(msg)) => match text_verdict(&msg) {
                    Verdict::Retry { elsewhere, .. } => {
                        last = format!("ERR {msg}");
                        if elsewhere {
                            self.next_node();
                        }
                    }
                    // The server could not tell whether it applied the
                    // write (leadership lost, a timeout): the session can.
                    Verdict::Unknown(_) if tag.is_some() => {
                        last = format!("ERR {msg} (sent again in its session)");
                        lost = Some(self.current_addr());
                    }
                    Verdict::Unknown(_) | Verdict::Final => {
                        return self.final_error(msg, lost);
                    }
                },
                Ok(resp) => return Ok(resp),
                Err(Attempt::Unreachable(e)) => {
                    last = e;
                    self.next_node();
                }
                Err(Attempt::Lost(addr)) if tag.is_some() => {
                    last = format!("{addr}: answer lost; sent again in its session");
                    lost = Some(addr);
                    self.next_node();
                }
                Err(Attempt::Lost(addr)) => {
                    self.conn = None;
                    return Err(ClientError::Lost { addr });
                }
                Err(Attempt::Refused(why)) => {
                    // Every node shares the CA: no other one will differ.
                    self.conn = None;
                    return Err(ClientError::Refused(why));
                }
            }
            std::thread::sleep(backoff.min(deadline.saturating_duration_since(Instant::now())));
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    /// An error answer that ends the request. If its session is gone after
    /// an earlier attempt's answer was lost, what became of that attempt
    /// is unknown.
    fn final_error(&self, msg: String, lost: Option<SocketAddr>) -> Result<Response, ClientError> {
        match lost {
            Some(addr) if msg == kv_engine::kv::NO_SESSION => Err(ClientError::Lost { addr }),
            _ => Ok(Response::Err(msg)),
        }
    }

    /// Drops the connection and tries the next node next.
    fn next_node(&mut self) {
        self.conn = None;
        self.endpoints.rotate();
    }

    fn unreachable(&self, last: String) -> ClientError {
        let addrs = self
            .endpoints
            .all()
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
        self.endpoints.redirect(to);
    }

    fn exchange(
        &mut self,
        req: &Request,
        tag: Option<Tag>,
        deadline: Instant,
    ) -> Result<Response, Attempt> {
        let remaining = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        if self.conn.as_ref().is_some_and(|(_, r)| is_stale(r)) {
            // The server closed it while we were idle (a restart, an idle
            // timeout): replace it before sending, not after a failure.
            self.conn = None;
        }
        if self.conn.is_none() {
            let addr = self.endpoints.current();
            let stream = Stream::open(addr, remaining, self.tls.as_ref())?;
            let mut reader = BufReader::new(stream);
            if self.protocol == Protocol::Binary && reader.get_mut().write_all(&MAGIC).is_err() {
                return Err(Attempt::Unreachable(format!("{addr}: connection closed")));
            }
            self.conn = Some((addr, reader));
        }
        if self.protocol == Protocol::Binary {
            return self.exchange_binary(req, tag, remaining);
        }
        let Some((addr, reader)) = self.conn.as_mut() else {
            return Err(Attempt::Unreachable("not connected".into()));
        };
        let addr = *addr;
        let stream = reader.get_mut();
        let _ = stream.socket().set_read_timeout(Some(remaining));
        let mut out = Vec::new();
        if let Some((session, seq, acked_below)) = tag {
            out.extend_from_slice(format!("@{session}/{seq}/{acked_below} ").as_bytes());
        }
        encode_request(req, &mut out);
        // A failed write on a kept connection (the server closed it) means
        // nothing was sent: reconnect and try again.
        if stream
            .write_all(&out)
            .and_then(|()| stream.flush())
            .is_err()
        {
            return Err(stream.why_closed(addr));
        }
        let mut resp = Vec::new();
        match reader.read_until(b'\n', &mut resp) {
            Ok(n) if n > 0 && resp.ends_with(b"\n") => {
                let line = resp.strip_suffix(b"\n").unwrap_or(&resp);
                parse_response(line).map_err(|_| Attempt::Lost(addr))
            }
            Err(e) => Err(lost_or_refused(addr, &e)),
            _ => Err(Attempt::Lost(addr)),
        }
    }
}

impl Client {
    /// Sends a request as a binary frame and returns its answer.
    fn exchange_binary(
        &mut self,
        req: &Request,
        tag: Option<Tag>,
        remaining: Duration,
    ) -> Result<Response, Attempt> {
        let Some((addr, reader)) = self.conn.as_mut() else {
            return Err(Attempt::Unreachable("not connected".into()));
        };
        let addr = *addr;
        let id = self.next_id;
        self.next_id += 1;
        let mut frame = Vec::new();
        encode_frame(&to_binary(id, req, tag), &mut frame);
        let stream = reader.get_mut();
        let _ = stream.socket().set_read_timeout(Some(remaining));
        if stream
            .write_all(&frame)
            .and_then(|()| stream.flush())
            .is_err()
        {
            return Err(stream.why_closed(addr));
        }
        loop {
            let mut len = [0u8; 4];
            if let Err(e) = reader.read_exact(&mut len) {
                return Err(lost_or_refused(addr, &e));
            }
            if &len == b"ERR " {
                // Not a frame: the server refused the connection (too many
                // connections) with a text line before closing it.
                let mut reason = String::new();
                let _ = reader.read_line(&mut reason);
                self.conn = None;
                return Ok(Response::Err(reason.trim_end().to_string()));
            }
            let len = u32::from_be_bytes(len) as usize;
            if len > MAX_FRAME_BYTES {
                return Err(Attempt::Lost(addr));
            }
            let mut payload = vec![0u8; len];
            if reader.read_exact(&mut payload).is_err() {
                return Err(Attempt::Lost(addr));
            }
            let Ok(resp) = pb::Response::decode(payload.as_slice()) else {
                return Err(Attempt::Lost(addr));
            };
            if resp.id == 0 && is_goaway(&resp) {
                // The node is stopping and did not read this request.
                self.conn = None;
                return Err(Attempt::Unreachable(format!("{addr}: node stopping")));
            }
            if resp.id != id && resp.id != 0 {
                continue; // an answer to an earlier, abandoned request
            }
            return Ok(from_binary(resp));
        }
    }
}

/// Whether a response is a stopping node's GOAWAY (id 0, UNAVAILABLE).
fn is_goaway(resp: &pb::Response) -> bool {
    matches!(&resp.result, Some(pb::response::Result::Error(e)) if e.kind == pb::error::Kind::Unavailable as i32)
}

/// Whether a request changes the store (and so goes in a session).
pub fn is_write(req: &Request) -> bool {
    matches!(
        req,
        Request::Set { .. }
            | Request::Del { .. }
            | Request::Cas { .. }
            | Request::MSet { .. }
            | Request::Incr { .. }
    )
}

/// A request as a binary frame, with its session tag if it has one.
fn to_binary(id: u64, req: &Request, tag: Option<Tag>) -> pb::Request {
    use pb::request::Op;
    let op = match req {
        Request::Get { key } => Op::Get(pb::Get { key: key.clone() }),
        Request::Set { key, value } => Op::Set(pb::Set {
            key: key.clone(),
            value: value.clone(),
        }),
        Request::Del { key } => Op::Del(pb::Del { key: key.clone() }),
        Request::Cas { key, expected, new } => Op::Cas(pb::Cas {
            key: key.clone(),
            expected: expected.clone(),
            new: new.clone(),
        }),
        Request::MSet { pairs } => Op::Mset(pb::MSet {
            pairs: pairs
                .iter()
                .map(|(key, value)| pb::KeyValue {
                    key: key.clone(),
                    value: value.clone(),
                })
                .collect(),
        }),
        Request::Ping => Op::Ping(pb::Ping {}),
        Request::Status => Op::Status(pb::StatusRequest {}),
        Request::TransferLeader { to } => Op::TransferLeader(pb::TransferLeader { to: *to }),
        Request::Incr { key, by } => Op::Incr(pb::Incr {
            key: key.clone(),
            by: *by,
        }),
        Request::OpenSession => Op::OpenSession(pb::OpenSession {}),
    };
    let (session, seq, acked_below) = tag.unwrap_or_default();
    pb::Request {
        id,
        op: Some(op),
        session,
        seq,
        acked_below,
    }
}

/// An answer as the text protocol shows it, except that a value is shown
/// quoted with escapes (`VALUE "x\nOK"`, `VALUE ""`) when it is empty or
/// holds anything but printable text, as redis-cli does.
pub fn display(resp: Response) -> String {
    match &resp {
        Response::Value(v) if needs_quotes(v) => format!("VALUE {}", quote(v)),
        Response::Fail(Some(v)) if needs_quotes(v) => format!("FAIL {}", quote(v)),
        _ => {
            let mut out = Vec::new();
            encode_response(&resp, &mut out);
            String::from_utf8_lossy(&out).trim_end().to_string()
        }
    }
}

/// Whether a value must be quoted to be shown unambiguously on one line.
fn needs_quotes(v: &[u8]) -> bool {
    match std::str::from_utf8(v) {
        Ok(text) => {
            text.is_empty()
                || text
                    .chars()
                    .any(|c| c.is_control() || c == '"' || c.is_whitespace())
        }
        Err(_) => true,
    }
}

/// `v` in double quotes, with `\n`, `\t`, `\"`, `\\` and `\xHH` escapes
/// (the forms `split_args` reads back).
pub fn quote(v: &[u8]) -> String {
    let mut out = String::from("\"");
    match std::str::from_utf8(v) {
        Ok(text) => {
            for c in text.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    c if c.is_control() => {
                        for b in c.to_string().bytes() {
                            out.push_str(&format!("\\x{b:02x}"));
                        }
                    }
                    c => out.push(c),
                }
            }
        }
        Err(_) => out.push_str(&v.escape_ascii().to_string()),
    }
    out.push('"');
    out
}

/// Splits a prompt line into arguments as redis-cli does: blanks separate
/// them; "double quotes" take `\n \r \t \b \a \\ \" \xHH`; 'single quotes'
/// take `\'` only. An argument may be empty (`""`) and hold any byte.
pub fn split_args(line: &str) -> Result<Vec<Vec<u8>>, String> {
    let mut args = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let Some(&first) = chars.peek() else {
            return Ok(args);
        };
        let mut arg = Vec::new();
        let mut buf = [0u8; 4];
        match first {
            '"' => {
                chars.next();
                loop {
                    match chars.next() {
                        None => return Err("unbalanced double quotes".into()),
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some('n') => arg.push(b'\n'),
                            Some('r') => arg.push(b'\r'),
                            Some('t') => arg.push(b'\t'),
                            Some('b') => arg.push(8),
                            Some('a') => arg.push(7),
                            Some('x') => {
                                let hex: String = chars.by_ref().take(2).collect();
                                match u8::from_str_radix(&hex, 16) {
                                    Ok(b) if hex.len() == 2 => arg.push(b),
                                    _ => return Err(format!("bad escape \\x{hex}")),
                                }
                            }
                            Some(c) => arg.extend_from_slice(c.encode_utf8(&mut buf).as_bytes()),
                            None => return Err("unbalanced double quotes".into()),
                        },
                        Some(c) => arg.extend_from_slice(c.encode_utf8(&mut buf).as_bytes()),
                    }
                }
            }
            '\'' => {
                chars.next();
                loop {
                    match chars.next() {
                        None => return Err("unbalanced single quotes".into()),
                        Some('\'') => break,
                        Some('\\') if chars.peek() == Some(&'\'') => {
                            chars.next();
                            arg.push(b'\'');
                        }
                        Some(c) => arg.extend_from_slice(c.encode_utf8(&mut buf).as_bytes()),
                    }
                }
            }
            _ => {
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() {
                        break;
                    }
                    chars.next();
                    arg.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
        if chars.peek().is_some_and(|c| !c.is_whitespace()) {
            return Err("a closing quote must be followed by a space".into());
        }
        args.push(arg);
    }
}

/// A binary answer in the text codec's terms.
pub fn from_binary(resp: pb::Response) -> Response {
    use pb::response::Result as R;
    match resp.result {
        Some(R::Ok(_)) => Response::Ok,
        Some(R::Value(v)) => Response::Value(v.value),
        Some(R::NotFound(_)) => Response::NotFound,
        Some(R::CasFailed(c)) => Response::Fail(c.current),
        Some(R::Pong(_)) => Response::Pong,
        Some(R::Redirect(r)) => Response::Redirect(r.leader),
        Some(R::Error(e)) => Response::Err(e.message),
        Some(R::Status(s)) => Response::Status(kv_net::status::proto_fields(&s)),
        Some(R::Int(i)) => Response::Int(i.value),
        Some(R::Session(s)) => Response::Session(s.id),
        None => Response::Err("empty response".into()),
    }
}

/// Whether a kept connection is no use any more: closed by the server, or
/// holding bytes nobody asked for (an answer to an abandoned request, a
/// TLS close alert). Checked without blocking before each request.
fn is_stale(reader: &BufReader<Stream>) -> bool {
    if !reader.buffer().is_empty() {
        return true;
    }
    let sock = reader.get_ref().socket();
    if sock.set_nonblocking(true).is_err() {
        return true;
    }
    let mut byte = [0u8; 1];
    let stale = match sock.peek(&mut byte) {
        Ok(_) => true, // EOF (0) or unexpected bytes
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    };
    stale || sock.set_nonblocking(false).is_err()
}

enum Attempt {
    /// Nothing was sent; safe to try elsewhere.
    Unreachable(String),
    /// Sent, no answer.
    Lost(SocketAddr),
    /// The TLS handshake failed: a certificate problem that retrying
    /// (here or on another node) will not mend.
    Refused(String),
}

/// What a failed read after sending means: a TLS alert is the server
/// refusing this client's certificate at the end of the handshake, before
/// it read any request (nothing was applied); anything else leaves the
/// outcome unknown.
fn lost_or_refused(addr: SocketAddr, e: &std::io::Error) -> Attempt {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => Attempt::Refused(format!("{addr}: refused by TLS: {tls}")),
        None => Attempt::Lost(addr),
    }
}

/// Resolves `host:port` strings (blank ones skipped) to one address each;
/// an error names the one that does not resolve, or says none was given.
pub fn resolve_addrs(addrs: &[String]) -> Result<Vec<SocketAddr>> {
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
    Ok(resolved)
}

/// Whether a response line means the request failed (for exit codes).
pub fn is_error(resp: &str) -> bool {
    resp.starts_with("ERR")
}

/// Builds a request from command-line words, one word per token, so a value
/// may hold spaces (`kv-cli SET k "two words"`).
pub fn request_from_words(words: &[String]) -> Result<Request, String> {
    let args: Vec<Vec<u8>> = words.iter().map(|w| w.as_bytes().to_vec()).collect();
    request_from_args(&args)
}

/// Builds a request from arguments of any bytes (the first names it).
pub fn request_from_args(args: &[Vec<u8>]) -> Result<Request, String> {
    let b = |s: &Vec<u8>| bytes::Bytes::copy_from_slice(s);
    let Some((name, args)) = args.split_first() else {
        return Err("no command given".into());
    };
    let name = String::from_utf8_lossy(name).to_ascii_uppercase();
    match (name.as_str(), args) {
        ("GET", [k]) => Ok(Request::Get { key: b(k) }),
        ("SET", [k, v]) => Ok(Request::Set {
            key: b(k),
            value: b(v),
        }),
        ("DEL", [k]) => Ok(Request::Del { key: b(k) }),
        ("CAS", [k, e, n]) => Ok(Request::Cas {
            key: b(k),
            expected: b(e),
            new: b(n),
        }),
        ("MSET", pairs) if !pairs.is_empty() && pairs.len() % 2 == 0 => Ok(Request::MSet {
            pairs: pairs.chunks(2).map(|p| (b(&p[0]), b(&p[1]))).collect(),
        }),
        ("INCR", [k]) => Ok(Request::Incr { key: b(k), by: 1 }),
        ("DECR", [k]) => Ok(Request::Incr { key: b(k), by: -1 }),
        ("INCRBY", [k, by]) => Ok(Request::Incr {
            key: b(k),
            by: parse_amount(by)?,
        }),
        ("DECRBY", [k, by]) => Ok(Request::Incr {
            key: b(k),
            by: parse_amount(by)?
                .checked_neg()
                .ok_or("amount out of range")?,
        }),
        ("PING", []) => Ok(Request::Ping),
        ("STATUS", []) => Ok(Request::Status),
        ("GET" | "DEL", _) => Err(format!("usage: {name} <key>")),
        ("SET", _) => Err("usage: SET <key> <value>".into()),
        ("CAS", _) => Err("usage: CAS <key> <expected> <new>".into()),
        ("MSET", _) => Err("usage: MSET <key> <value> [<key> <value> ...]".into()),
        ("INCR" | "DECR", _) => Err(format!("usage: {name} <key>")),
        ("INCRBY" | "DECRBY", _) => Err(format!("usage: {name} <key> <amount>")),
        ("PING", _) => Err("usage: PING".into()),
        _ => Err(format!(
            "unknown command '{name}' (SET, GET, DEL, CAS, MSET, INCR, INCRBY, DECR, DECRBY, PING, STATUS, TRANSFER-LEADER)"
        )),
    }
}

/// An INCRBY/DECRBY amount: a signed 64-bit integer.
fn parse_amount(word: &[u8]) -> Result<i64, String> {
    std::str::from_utf8(word)
        .ok()
        .and_then(|w| w.parse().ok())
        .ok_or_else(|| format!("'{}' is not an integer", String::from_utf8_lossy(word)))
}

#[cfg(test)]
// Test code: its sockets are its own loopback listeners and its inputs are
// fixed here, not from a peer, disk or user; an unwrap that fails is how a
// test reports.
mod tests {
    use super::*;

    /// A fake node on loopback that answers every request line with
    /// `answer`, counting the requests.
    fn fake_node(answer: String) -> (String, Arc<std::sync::atomic::AtomicU64>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut conn = conn;
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 {
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let _ = conn.write_all(format!("{answer}\n").as_bytes());
                    line.clear();
                }
            }
        });
        (addr, seen)
    }

    #[test]
    fn a_node_that_cannot_serve_sends_the_client_to_another_and_a_bad_request_ends_it() {
        let failed = kv_net::api::FailKind::Unavailable.message();
        let (broken, _) = fake_node(format!("ERR {failed}"));
        let (healthy, _) = fake_node("OK".into());
        let mut client = Client::new(&[broken, healthy], Duration::from_secs(5)).unwrap();
        let set = Request::Set {
            key: b"k".to_vec().into(),
            value: b"v".to_vec().into(),
        };
        assert_eq!(client.call(&set).unwrap(), Response::Ok);

        let (refusing, seen) = fake_node("ERR key too long (5 > 4 bytes)".into());
        let mut client = Client::new(&[refusing], Duration::from_secs(5)).unwrap();
        assert_eq!(
            client.call(&set).unwrap(),
            Response::Err("key too long (5 > 4 bytes)".into())
        );
        assert_eq!(
            seen.load(std::sync::atomic::Ordering::Relaxed),
            1,
            "not sent again"
        );
    }

    #[test]
    fn prompt_lines_split_like_redis_cli() {
        let args = split_args(r#"SET "two words" 'it\'s' "\x00\n" """#).unwrap();
        assert_eq!(
            args,
            vec![
                b"SET".to_vec(),
                b"two words".to_vec(),
                b"it's".to_vec(),
                vec![0, b'\n'],
                Vec::new()
            ]
        );
        assert!(split_args(r#"SET "open"#).is_err());
        assert!(split_args(r#"SET "a"b"#).is_err());
    }

    #[test]
    fn values_that_are_not_plain_text_are_shown_quoted_and_read_back() {
        for v in [&b""[..], b"a b", b"\x00\xff", b"line\nbreak", b"say \"hi\""] {
            let shown = display(Response::Value(bytes::Bytes::copy_from_slice(v)));
            let quoted = shown.strip_prefix("VALUE ").unwrap();
            assert_eq!(split_args(quoted).unwrap(), vec![v.to_vec()], "{shown}");
        }
        assert_eq!(
            display(Response::Value(bytes::Bytes::from("plain"))),
            "VALUE plain"
        );
    }
}
