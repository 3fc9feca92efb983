//! The client text protocol, one request per line (DESIGN.md, Protocols):
//!
//! ```text
//! SET <key> <value>          -> OK
//! GET <key>                  -> VALUE <value> | NOT_FOUND
//! DEL <key>                  -> OK | NOT_FOUND
//! CAS <key> <expected> <new> -> OK | FAIL <current> | FAIL NOT_FOUND
//! MSET <key> <value> ...      -> OK (every pair, atomically)
//! PING                       -> PONG
//! INCR <key> [<by>]          -> INT <new value> | ERR value is not an integer ...
//! SESSION                    -> SESSION <id> (opens an exactly-once session)
//! @<session>/<seq> <write>   -> the write, at most once in that session
//! STATUS                     -> STATUS id=1 role=leader term=3 ... (this node's own)
//! TRANSFER-LEADER [<id>]     -> OK once another member leads | ERR <why>
//! (follower)                 -> REDIRECT <host:port>
//! (no leader)                -> ERR no leader
//! (malformed)                -> ERR <reason>
//! ```
//!
//! Lines end in `\n` (a trailing `\r` is tolerated); tokens are separated by
//! one or more spaces; command names are case-insensitive. Keys and values
//! are any bytes except space, tab, CR, LF and NUL (use the binary protocol
//! for those). This module is a pure codec plus a bounded line reader.
//!
//! Every request gets exactly one answer line. A value a binary client
//! stored with CR, LF or NUL in it cannot be carried on one line: a text
//! `GET` of it (or a `CAS` that fails against it) answers
//! `ERR value holds CR, LF or NUL bytes: read it with the binary protocol`
//! instead (see `Response::for_text_line`).

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::budget::{Charge, ConnectionBudget};
use crate::api::MAX_MSET_PAIRS;
pub use crate::limits::TextLimits;

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `GET key`
    Get {
        /// The key.
        key: Bytes,
    },
    /// `SET key value`
    Set {
        /// The key.
        key: Bytes,
        /// The value.
        value: Bytes,
    },
    /// `DEL key`
    Del {
        /// The key.
        key: Bytes,
    },
    /// `CAS key expected new`
    Cas {
        /// The key.
        key: Bytes,
        /// The value it must hold.
        expected: Bytes,
        /// The value to write.
        new: Bytes,
    },
    /// `MSET key value [key value ...]`, applied atomically.
    MSet {
        /// The pairs, in order (a later pair for a key wins).
        pairs: Vec<(Bytes, Bytes)>,
    },
    /// `PING`
    Ping,
    /// `INCR key [by]`
    Incr {
        /// The key.
        key: Bytes,
        /// The amount.
        by: i64,
    },
    /// `SESSION`: open an exactly-once session.
    OpenSession,
    /// `STATUS`: this node's own status (never redirected).
    Status,
    /// `TRANSFER-LEADER [id]`: hand leadership over.
    TransferLeader {
        /// The member to lead next (None: the most up-to-date).
        to: Option<u64>,
    },
}

/// A response line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// `OK`
    Ok,
    /// `VALUE <value>`
    Value(Bytes),
    /// `NOT_FOUND`
    NotFound,
    /// `FAIL <current>` or `FAIL NOT_FOUND` (None)
    Fail(Option<Bytes>),
    /// `PONG`
    Pong,
    /// `REDIRECT <host:port>`
    Redirect(String),
    /// `ERR <reason>`
    Err(String),
    /// `STATUS key=value ...`, in order (values hold no spaces).
    Status(Vec<(String, String)>),
    /// `INT <n>`
    Int(i64),
    /// `SESSION <id>`
    Session(u64),
}

/// A request line with its session tag, if it has one (`@<session>/<seq>`
/// or `@<session>/<seq>/<acked below>` before the command).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tagged {
    /// `(session, seq, acked_below)`.
    pub session: Option<(u64, u64, u64)>,
    /// The request.
    pub request: Request,
}

/// Parses a request line that may start with a session tag.
pub fn parse_tagged(line: &[u8], limits: &TextLimits) -> Result<Tagged, ParseError> {
    let line = strip_cr(line);
    let trimmed = line
        .iter()
        .position(|&b| !is_separator(b))
        .unwrap_or(line.len());
    let rest = line.get(trimmed..).unwrap_or_default();
    let Some(tagged) = rest.strip_prefix(b"@") else {
        return Ok(Tagged {
            session: None,
            request: parse_request(line, limits)?,
        });
    };
    let end = tagged
        .iter()
        .position(|&b| is_separator(b))
        .unwrap_or(tagged.len());
    let (tag, command) = tagged.split_at(end);
    let numbers: Vec<Option<u64>> = tag
        .split(|&b| b == b'/')
        .map(|n| std::str::from_utf8(n).ok().and_then(|n| n.parse().ok()))
        .collect();
    let session = match numbers.as_slice() {
        [Some(s), Some(q)] if *s > 0 && *q > 0 => (*s, *q, 0),
        [Some(s), Some(q), Some(a)] if *s > 0 && *q > 0 => (*s, *q, *a),
        _ => return Err(ParseError::BadTag),
    };
    Ok(Tagged {
        session: Some(session),
        request: parse_request(command, limits)?,
    })
}

/// The answer to a text `GET` or failed `CAS` whose value no line can carry.
pub const UNPRINTABLE_VALUE: &str =
    "value holds CR, LF or NUL bytes: read it with the binary protocol";

/// Whether `value` can be sent inside one answer line.
pub fn fits_on_a_line(value: &[u8]) -> bool {
    !value.iter().any(|&b| matches!(b, b'\n' | b'\r' | 0))
}

impl Response {
    /// This answer as one text line can carry it: a value with CR, LF or
    /// NUL in it becomes `ERR` (naming the binary protocol), so a text
    /// client always reads exactly one line per request.
    pub fn for_text_line(self) -> Response {
        match &self {
            Response::Value(v) | Response::Fail(Some(v)) if !fits_on_a_line(v) => {
                Response::Err(UNPRINTABLE_VALUE.into())
            }
            _ => self,
        }
    }
}

/// Why a line is not a valid request or response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Nothing but spaces.
    #[error("empty request")]
    Empty,
    /// The first token is no known command.
    #[error("unknown command '{0}'")]
    UnknownCommand(String),
    /// Too many or too few arguments.
    #[error("wrong number of arguments for {command} (expected {expected})")]
    Arity {
        /// The command.
        command: &'static str,
        /// What it takes.
        expected: &'static str,
    },
    /// An MSET of more pairs than `crate::api::MAX_MSET_PAIRS`.
    #[error("MSET of more than {max} pairs")]
    TooManyPairs {
        /// The limit.
        max: usize,
    },
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
    /// A NUL or other control byte the text protocol cannot carry.
    #[error("invalid byte 0x{0:02x} in request (use the binary protocol)")]
    InvalidByte(u8),
    /// A line over the limit.
    #[error("line too long (max {max} bytes)")]
    LineTooLong {
        /// The limit.
        max: usize,
    },
    /// A session tag that is not `@<session>/<seq>[/<acked below>]` with
    /// positive numbers.
    #[error("bad session tag (expected @<session>/<seq>[/<acked below>])")]
    BadTag,
    /// A response line that is not one of the forms above.
    #[error("unrecognised response '{0}'")]
    BadResponse(String),
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn is_separator(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Splits a request line into tokens, refusing bytes the protocol cannot carry.
fn tokens(line: &[u8]) -> Result<Vec<&[u8]>, ParseError> {
    if let Some(&bad) = line.iter().find(|&&b| b == 0 || b == b'\r' || b == b'\n') {
        return Err(ParseError::InvalidByte(bad));
    }
    Ok(line
        .split(|&b| is_separator(b))
        .filter(|t| !t.is_empty())
        .collect())
}

/// Every command and its usage, for the error a malformed one gets.
const USAGE: [(&str, &str); 10] = [
    ("GET", "GET <key>"),
    ("SET", "SET <key> <value>"),
    ("DEL", "DEL <key>"),
    ("CAS", "CAS <key> <expected> <new>"),
    ("MSET", "MSET <key> <value> [<key> <value> ...]"),
    ("PING", "PING"),
    ("INCR", "INCR <key> [<integer>]"),
    ("SESSION", "SESSION"),
    ("STATUS", "STATUS"),
    ("TRANSFER-LEADER", "TRANSFER-LEADER [<member id>]"),
];

/// Parses one request line (without its `\n`).
pub fn parse_request(line: &[u8], limits: &TextLimits) -> Result<Request, ParseError> {
    let line = strip_cr(line);
    if line.len() > limits.max_line_bytes {
        return Err(ParseError::LineTooLong {
            max: limits.max_line_bytes,
        });
    }
    let toks = tokens(line)?;
    let Some((&name, args)) = toks.split_first() else {
        return Err(ParseError::Empty);
    };
    let upper = name.to_ascii_uppercase();
    if let Some(request) = well_formed(&upper, args, limits)? {
        return Ok(request);
    }
    match USAGE.iter().find(|(c, _)| c.as_bytes() == upper.as_slice()) {
        Some(&(command, expected)) => Err(ParseError::Arity { command, expected }),
        None => {
            let shown: String = String::from_utf8_lossy(&name[..name.len().min(32)]).into_owned();
            Err(ParseError::UnknownCommand(shown))
        }
    }
}

/// The request, if `name` (upper case) and `args` make one; keys and
/// values are held to the limits.
fn well_formed(
    name: &[u8],
    args: &[&[u8]],
    limits: &TextLimits,
) -> Result<Option<Request>, ParseError> {
    let key = |t: &[u8]| -> Result<Bytes, ParseError> {
        if t.len() > limits.max_key_bytes {
            return Err(ParseError::KeyTooLong {
                len: t.len(),
                max: limits.max_key_bytes,
            });
        }
        Ok(Bytes::copy_from_slice(t))
    };
    let value = |t: &[u8]| -> Result<Bytes, ParseError> {
        if t.len() > limits.max_value_bytes {
            return Err(ParseError::ValueTooLong {
                len: t.len(),
                max: limits.max_value_bytes,
            });
        }
        Ok(Bytes::copy_from_slice(t))
    };
    Ok(Some(match (name, args) {
        (b"GET", [k]) => Request::Get { key: key(k)? },
        (b"SET", [k, v]) => Request::Set {
            key: key(k)?,
            value: value(v)?,
        },
        (b"DEL", [k]) => Request::Del { key: key(k)? },
        (b"CAS", [k, e, n]) => Request::Cas {
            key: key(k)?,
            expected: value(e)?,
            new: value(n)?,
        },
        (b"MSET", args) if args.len() / 2 > MAX_MSET_PAIRS => {
            return Err(ParseError::TooManyPairs {
                max: MAX_MSET_PAIRS,
            })
        }
        (b"MSET", args) if !args.is_empty() && args.len() % 2 == 0 => Request::MSet {
            pairs: args
                .chunks_exact(2)
                .filter_map(|pair| match pair {
                    [k, v] => Some((key(k), value(v))),
                    _ => None,
                })
                .map(|(k, v)| Ok((k?, v?)))
                .collect::<Result<_, ParseError>>()?,
        },
        (b"PING", []) => Request::Ping,
        (b"INCR", [k]) => Request::Incr {
            key: key(k)?,
            by: 1,
        },
        (b"INCR", [k, by]) => match number::<i64>(by) {
            Some(by) => Request::Incr { key: key(k)?, by },
            None => return Ok(None),
        },
        (b"SESSION", []) => Request::OpenSession,
        (b"STATUS", []) => Request::Status,
        (b"TRANSFER-LEADER", []) => Request::TransferLeader { to: None },
        (b"TRANSFER-LEADER", [id]) => match number::<u64>(id) {
            Some(id) => Request::TransferLeader { to: Some(id) },
            None => return Ok(None),
        },
        _ => return Ok(None),
    }))
}

/// A decimal number, if `t` is one.
fn number<T: std::str::FromStr>(t: &[u8]) -> Option<T> {
    std::str::from_utf8(t).ok()?.parse().ok()
}

/// Encodes a request as one line (for clients).
pub fn encode_request(req: &Request, out: &mut Vec<u8>) {
    let to;
    let (name, args): (&[u8], Vec<&Bytes>) = match req {
        Request::Get { key } => (b"GET", vec![key]),
        Request::Set { key, value } => (b"SET", vec![key, value]),
        Request::Del { key } => (b"DEL", vec![key]),
        Request::Cas { key, expected, new } => (b"CAS", vec![key, expected, new]),
        Request::MSet { pairs } => (b"MSET", pairs.iter().flat_map(|(k, v)| [k, v]).collect()),
        Request::Ping => (b"PING", vec![]),
        Request::Status => (b"STATUS", vec![]),
        Request::OpenSession => (b"SESSION", vec![]),
        Request::Incr { key, by } => {
            to = Bytes::from(by.to_string());
            (b"INCR", vec![key, &to])
        }
        Request::TransferLeader { to: None } => (b"TRANSFER-LEADER", vec![]),
        Request::TransferLeader { to: Some(id) } => {
            to = Bytes::from(id.to_string());
            (b"TRANSFER-LEADER", vec![&to])
        }
    };
    out.extend_from_slice(name);
    for arg in args {
        out.push(b' ');
        out.extend_from_slice(arg);
    }
    out.push(b'\n');
}

/// Encodes a response as one line ending in `\n` (a value no line can
/// carry becomes `ERR`, as `Response::for_text_line` says).
pub fn encode_response(resp: &Response, out: &mut Vec<u8>) {
    match &resp.clone().for_text_line() {
        Response::Ok => out.extend_from_slice(b"OK"),
        Response::Value(v) => {
            out.extend_from_slice(b"VALUE ");
            out.extend_from_slice(v);
        }
        Response::NotFound => out.extend_from_slice(b"NOT_FOUND"),
        Response::Fail(Some(v)) => {
            out.extend_from_slice(b"FAIL ");
            out.extend_from_slice(v);
        }
        Response::Fail(None) => out.extend_from_slice(b"FAIL NOT_FOUND"),
        Response::Pong => out.extend_from_slice(b"PONG"),
        Response::Redirect(addr) => {
            out.extend_from_slice(b"REDIRECT ");
            out.extend_from_slice(addr.as_bytes());
        }
        Response::Err(reason) => {
            out.extend_from_slice(b"ERR ");
            // A reason never breaks the line.
            out.extend(
                reason
                    .bytes()
                    .map(|b| if b == b'\n' || b == b'\r' { b' ' } else { b }),
            );
        }
        Response::Int(n) => {
            out.extend_from_slice(b"INT ");
            out.extend_from_slice(n.to_string().as_bytes());
        }
        Response::Session(id) => {
            out.extend_from_slice(b"SESSION ");
            out.extend_from_slice(id.to_string().as_bytes());
        }
        Response::Status(fields) => {
            out.extend_from_slice(b"STATUS");
            for (k, v) in fields {
                out.push(b' ');
                out.extend(
                    k.bytes()
                        .chain(std::iter::once(b'='))
                        .chain(v.bytes())
                        .map(|b| if b.is_ascii_whitespace() { b'_' } else { b }),
                );
            }
        }
    }
    out.push(b'\n');
}

/// Parses a response line (without its `\n`), for clients and tests.
pub fn parse_response(line: &[u8]) -> Result<Response, ParseError> {
    let line = strip_cr(line);
    let (head, rest) = match line.iter().position(|&b| b == b' ') {
        Some(i) => (&line[..i], Some(&line[i + 1..])),
        None => (line, None),
    };
    let bad = || {
        ParseError::BadResponse(String::from_utf8_lossy(&line[..line.len().min(64)]).into_owned())
    };
    match (head, rest) {
        (b"OK", None) => Ok(Response::Ok),
        (b"NOT_FOUND", None) => Ok(Response::NotFound),
        (b"PONG", None) => Ok(Response::Pong),
        (b"VALUE", Some(v)) => Ok(Response::Value(Bytes::copy_from_slice(v))),
        (b"FAIL", Some(b"NOT_FOUND")) => Ok(Response::Fail(None)),
        (b"FAIL", Some(v)) => Ok(Response::Fail(Some(Bytes::copy_from_slice(v)))),
        (b"REDIRECT", Some(a)) => Ok(Response::Redirect(String::from_utf8_lossy(a).into_owned())),
        (b"ERR", r) => Ok(Response::Err(
            String::from_utf8_lossy(r.unwrap_or_default()).into_owned(),
        )),
        (b"INT", Some(n)) => std::str::from_utf8(n)
            .ok()
            .and_then(|n| n.parse().ok())
            .map(Response::Int)
            .ok_or_else(bad),
        (b"SESSION", Some(n)) => std::str::from_utf8(n)
            .ok()
            .and_then(|n| n.parse().ok())
            .map(Response::Session)
            .ok_or_else(bad),
        (b"STATUS", r) => Ok(Response::Status(
            String::from_utf8_lossy(r.unwrap_or_default())
                .split(' ')
                .filter(|f| !f.is_empty())
                .map(|f| match f.split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (f.to_string(), String::new()),
                })
                .collect(),
        )),
        _ => Err(bad()),
    }
}

/// Why the line reader stopped.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    /// A line exceeded the limit; the connection should be answered and closed.
    #[error("line too long (max {max} bytes)")]
    TooLong {
        /// The limit.
        max: usize,
    },
    /// The peer closed the connection in the middle of a line.
    #[error("connection closed mid-line")]
    Truncated,
    /// A read failed.
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads `\n`-terminated lines with a bounded buffer.
pub struct LineReader<R> {
    inner: R,
    buf: Vec<u8>,
    /// Bytes of `buf` already searched for a newline.
    scanned: usize,
    /// Start of the unread part of `buf`.
    start: usize,
    max_line: usize,
    /// A line still arriving beyond `LINE_BASE` bytes is charged to this.
    budget: Option<ConnectionBudget>,
    held: Charge,
}

/// Bytes of a partial line a connection holds without charging a budget.
pub const LINE_BASE: usize = 16 * 1024;

impl<R: AsyncRead + Unpin> LineReader<R> {
    /// A reader refusing lines longer than `max_line` bytes.
    pub fn new(inner: R, max_line: usize) -> Self {
        Self::with_initial(inner, max_line, &[])
    }

    /// As `new`, with bytes already read from the stream (the listener reads
    /// one to tell the protocols apart).
    pub fn with_initial(inner: R, max_line: usize, initial: &[u8]) -> Self {
        let mut buf = Vec::with_capacity(4096);
        buf.extend_from_slice(initial);
        LineReader {
            inner,
            buf,
            scanned: 0,
            start: 0,
            max_line,
            budget: None,
            held: Charge::none(),
        }
    }

    /// Charges a line still arriving beyond `LINE_BASE` bytes to `budget`,
    /// so slow senders of long lines cannot hold unbounded memory.
    pub fn charging(mut self, budget: ConnectionBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// The next line without its `\n`; `None` at a clean end of stream.
    pub async fn next_line(&mut self) -> Result<Option<Vec<u8>>, LineError> {
        loop {
            if let Some(pos) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
                let end = self.scanned + pos;
                if end - self.start > self.max_line + 1 {
                    return Err(LineError::TooLong { max: self.max_line });
                }
                let line = self.buf[self.start..end].to_vec();
                self.start = end + 1;
                self.scanned = self.start;
                self.held = Charge::none();
                if self.buf.capacity() > 4 * LINE_BASE && self.buf.len() - self.start < LINE_BASE {
                    // A long line went by: give its room back.
                    self.buf.drain(..self.start);
                    self.scanned = 0;
                    self.start = 0;
                    self.buf.shrink_to(LINE_BASE);
                }
                return Ok(Some(line));
            }
            self.scanned = self.buf.len();
            // +1 leaves room for a trailing '\r'.
            if self.buf.len() - self.start > self.max_line + 1 {
                return Err(LineError::TooLong { max: self.max_line });
            }
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.scanned -= self.start;
                self.start = 0;
            }
            let pending = self.buf.len();
            if let Some(budget) = self.budget.as_ref().filter(|_| pending > LINE_BASE) {
                if self.held.bytes() < pending + 4096 {
                    let more = budget.charge(4 * LINE_BASE).await;
                    self.held.merge(more);
                }
            }
            let mut chunk = [0u8; 4096];
            let n = self.inner.read(&mut chunk).await?;
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(LineError::Truncated)
                };
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Returns true if a complete line is already buffered (no read needed).
    pub fn has_buffered_line(&self) -> bool {
        self.buf[self.start..].contains(&b'\n')
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{block_on, Pieces};

    fn limits() -> TextLimits {
        TextLimits {
            max_line_bytes: 64,
            max_key_bytes: 8,
            max_value_bytes: 16,
        }
    }

    fn parse(s: &str) -> Result<Request, ParseError> {
        parse_request(s.as_bytes(), &limits())
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn parses_every_command() {
        assert_eq!(
            parse("SET a 1"),
            Ok(Request::Set {
                key: b("a"),
                value: b("1")
            })
        );
        assert_eq!(parse("get a"), Ok(Request::Get { key: b("a") }));
        assert_eq!(parse("Del a\r"), Ok(Request::Del { key: b("a") }));
        assert_eq!(
            parse("CAS a 1 2"),
            Ok(Request::Cas {
                key: b("a"),
                expected: b("1"),
                new: b("2")
            })
        );
        assert_eq!(parse("  PING  "), Ok(Request::Ping));
        assert_eq!(
            parse("mset a 1 b 2 a 3"),
            Ok(Request::MSet {
                pairs: vec![(b("a"), b("1")), (b("b"), b("2")), (b("a"), b("3"))]
            })
        );
        assert_eq!(
            parse("SET  a   1"),
            Ok(Request::Set {
                key: b("a"),
                value: b("1")
            })
        );
    }

    #[test]
    fn refuses_malformed_requests_with_a_reason() {
        assert_eq!(parse(""), Err(ParseError::Empty));
        assert_eq!(parse("   "), Err(ParseError::Empty));
        assert_eq!(
            parse("FLY a"),
            Err(ParseError::UnknownCommand("FLY".into()))
        );
        assert!(matches!(
            parse("SET a"),
            Err(ParseError::Arity { command: "SET", .. })
        ));
        assert!(matches!(
            parse("SET a 1 2"),
            Err(ParseError::Arity { command: "SET", .. })
        ));
        assert!(matches!(
            parse("GET"),
            Err(ParseError::Arity { command: "GET", .. })
        ));
        assert!(matches!(
            parse("CAS a 1"),
            Err(ParseError::Arity { command: "CAS", .. })
        ));
        for odd in ["MSET", "MSET a", "MSET a 1 b"] {
            assert!(
                matches!(
                    parse(odd),
                    Err(ParseError::Arity {
                        command: "MSET",
                        ..
                    })
                ),
                "{odd}"
            );
        }
        let many = format!("MSET{}", " k v".repeat(MAX_MSET_PAIRS + 1));
        assert_eq!(
            parse_request(many.as_bytes(), &TextLimits::default()),
            Err(ParseError::TooManyPairs {
                max: MAX_MSET_PAIRS
            })
        );
        assert_eq!(
            parse("MSET a 1 b 12345678901234567"),
            Err(ParseError::ValueTooLong { len: 17, max: 16 })
        );
        assert!(matches!(
            parse("PING x"),
            Err(ParseError::Arity {
                command: "PING",
                ..
            })
        ));
        assert_eq!(
            parse("GET 123456789"),
            Err(ParseError::KeyTooLong { len: 9, max: 8 })
        );
        assert_eq!(
            parse("SET k 12345678901234567"),
            Err(ParseError::ValueTooLong { len: 17, max: 16 })
        );
        assert_eq!(parse("GET a\0b"), Err(ParseError::InvalidByte(0)));
        assert_eq!(parse("GET a\rb"), Err(ParseError::InvalidByte(b'\r')));
        let long = format!("GET {}", "x".repeat(70));
        assert_eq!(parse(&long), Err(ParseError::LineTooLong { max: 64 }));
        // Non-UTF-8 bytes are fine in keys and values.
        assert_eq!(
            parse_request(b"SET \xff\xfe v", &limits()),
            Ok(Request::Set {
                key: Bytes::from_static(b"\xff\xfe"),
                value: b("v")
            })
        );
        let msg = parse("SET a").unwrap_err().to_string();
        assert!(msg.contains("SET <key> <value>"), "{msg}");
    }

    #[test]
    fn responses_round_trip() {
        for resp in [
            Response::Ok,
            Response::Value(b("v1")),
            Response::NotFound,
            Response::Fail(Some(b("cur"))),
            Response::Fail(None),
            Response::Pong,
            Response::Redirect("127.0.0.1:7002".into()),
            Response::Err("no leader".into()),
        ] {
            let mut out = Vec::new();
            encode_response(&resp, &mut out);
            assert_eq!(out.last(), Some(&b'\n'));
            assert_eq!(parse_response(&out[..out.len() - 1]), Ok(resp));
        }
        let mut out = Vec::new();
        encode_response(&Response::Err("two\nlines".into()), &mut out);
        assert_eq!(out, b"ERR two lines\n");
        assert!(parse_response(b"WHAT").is_err());
    }

    proptest::proptest! {
        /// Whatever bytes a value holds, its answer is exactly one line,
        /// which reads back as that value or as the ERR naming the binary
        /// protocol.
        #[test]
        fn every_answer_is_exactly_one_line(value in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let value = Bytes::from(value);
            for resp in [Response::Value(value.clone()), Response::Fail(Some(value.clone()))] {
                let mut out = Vec::new();
                encode_response(&resp, &mut out);
                proptest::prop_assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
                proptest::prop_assert_eq!(out.last(), Some(&b'\n'));
                let parsed = parse_response(&out[..out.len() - 1]).unwrap();
                if fits_on_a_line(&value) {
                    proptest::prop_assert_eq!(parsed, resp);
                } else {
                    proptest::prop_assert_eq!(parsed, Response::Err(UNPRINTABLE_VALUE.into()));
                }
            }
        }
    }

    #[test]
    fn requests_encode_to_parseable_lines() {
        let req = Request::Cas {
            key: b("k"),
            expected: b("a"),
            new: b("b"),
        };
        let mut out = Vec::new();
        encode_request(&req, &mut out);
        assert_eq!(out, b"CAS k a b\n");
        assert_eq!(parse_request(&out[..out.len() - 1], &limits()), Ok(req));
    }

    #[test]
    fn line_reader_joins_pieces_and_splits_lines() {
        block_on(async {
            let mut r = LineReader::new(Pieces(b"PING\r\nGET a\nSET b 2\n".to_vec(), 3), 64);
            assert_eq!(r.next_line().await.unwrap().unwrap(), b"PING\r");
            assert_eq!(r.next_line().await.unwrap().unwrap(), b"GET a");
            assert_eq!(r.next_line().await.unwrap().unwrap(), b"SET b 2");
            assert!(r.next_line().await.unwrap().is_none());
        });
    }

    #[test]
    fn line_reader_refuses_an_over_long_line_and_a_truncated_one() {
        block_on(async {
            let mut r = LineReader::new(Pieces(vec![b'x'; 200], 7), 64);
            assert!(matches!(
                r.next_line().await,
                Err(LineError::TooLong { max: 64 })
            ));
            let mut r = LineReader::new(Pieces(b"GET a".to_vec(), 100), 64);
            assert!(matches!(r.next_line().await, Err(LineError::Truncated)));
            // Exactly at the limit is fine.
            let mut line = vec![b'y'; 64];
            line.push(b'\n');
            let mut r = LineReader::new(Pieces(line, 5), 64);
            assert_eq!(r.next_line().await.unwrap().unwrap().len(), 64);
        });
    }
}
