//! The Redis serialization protocol (RESP2, and RESP3 after `HELLO 3`):
//! reading commands (arrays of bulk strings, or inline lines) with bounds
//! on every length, writing replies, and reading one whole reply as raw
//! bytes (to relay a leader's answer through a follower).
//!
//! Spec: <https://redis.io/docs/latest/develop/reference/protocol-spec/>.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::budget::{Charge, ConnectionBudget};

/// Bytes a command still arriving may hold without a charge, and the room
/// a reader keeps between commands.
const PENDING_BASE: usize = 16 * 1024;

/// Why a command or reply could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RespError {
    /// Not RESP (answered with `-ERR Protocol error: ...` and closed, as
    /// Redis does).
    #[error("Protocol error: {0}")]
    Protocol(String),
    /// Larger than the limits allow.
    #[error("Protocol error: {0}")]
    TooLarge(String),
    /// The stream ended inside a command.
    #[error("connection closed inside a command")]
    Truncated,
    /// A read failed.
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Limits on what a command may hold.
#[derive(Debug, Clone, Copy)]
pub struct RespLimits {
    /// Arguments in one command.
    pub max_args: usize,
    /// Bytes in one argument.
    pub max_arg_bytes: usize,
    /// Bytes in one command, all arguments together.
    pub max_command_bytes: usize,
    /// Bytes in one inline command line.
    pub max_inline_bytes: usize,
}

/// Reads commands from a stream, buffering what arrives.
pub struct RespReader<R> {
    inner: R,
    buf: BytesMut,
    limits: RespLimits,
    /// How far the command at the start of `buf` has been read, so a large
    /// one arriving in many reads is parsed once, not again on each.
    progress: Progress,
    /// What a command still arriving is charged to (None: nothing).
    budget: Option<ConnectionBudget>,
    /// The charge for the command arriving: its bytes in `buf` and its
    /// arguments copied out so far.
    held: Charge,
}

/// What `parse` found at the start of the buffer.
enum Parsed {
    /// Not all of it has arrived yet.
    Incomplete,
    /// A whole command: its arguments and its length in bytes.
    Command(Vec<Bytes>, usize),
}

/// The part of an array command read so far.
#[derive(Debug, Default)]
struct Progress {
    /// Arguments announced (None: the header has not arrived).
    count: Option<usize>,
    /// Where the next argument starts in the buffer.
    at: usize,
    /// The arguments read.
    args: Vec<Bytes>,
    /// Their bytes, together.
    total: usize,
}

impl<R: AsyncRead + Unpin> RespReader<R> {
    /// A reader over `inner`, which may already have sent `initial`.
    pub fn new(inner: R, limits: RespLimits, initial: &[u8]) -> Self {
        let mut buf = BytesMut::with_capacity(16 * 1024);
        buf.extend_from_slice(initial);
        RespReader {
            inner,
            buf,
            limits,
            progress: Progress::default(),
            budget: None,
            held: Charge::none(),
        }
    }

    /// Charges a command still arriving, beyond `PENDING_BASE` bytes, to
    /// `budget`: a client sending large commands slowly holds its share
    /// of the budget meanwhile, like one whose commands are queued.
    pub fn charging(mut self, budget: ConnectionBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// The next command's arguments (an empty one is skipped); None at a
    /// clean end of stream. Cancel-safe.
    pub async fn next_command(&mut self) -> Result<Option<Vec<Bytes>>, RespError> {
        loop {
            if let Parsed::Command(args, used) = parse(&self.buf, &self.limits, &mut self.progress)?
            {
                self.buf.advance(used);
                self.held = Charge::none();
                self.give_back_room();
                if args.is_empty() {
                    continue;
                }
                return Ok(Some(args));
            }
            self.charge_pending().await;
            self.buf.reserve(PENDING_BASE);
            // At most what the charge leaves room for, whatever capacity
            // the buffer grew to.
            let room = &mut (&mut self.buf).limit(3 * PENDING_BASE);
            if self.inner.read_buf(room).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(RespError::Truncated)
                };
            }
        }
    }

    /// Holds a charge for the command arriving once it is past
    /// `PENDING_BASE` bytes (what is buffered, the arguments copied out,
    /// and room for the next read).
    async fn charge_pending(&mut self) {
        let pending = self.buf.len().saturating_add(self.progress.total);
        let Some(budget) = self.budget.as_ref().filter(|_| pending > PENDING_BASE) else {
            return;
        };
        // Charged in steps, never past the whole budget (a command larger
        // than the budget is not charged beyond it).
        let most = budget.most();
        let held = self.held.bytes();
        if held < pending.saturating_add(PENDING_BASE).min(most) {
            let want = pending.saturating_add(4 * PENDING_BASE).min(most);
            let more = budget.charge(want.saturating_sub(held)).await;
            self.held.merge(more);
        }
    }

    /// After a large command, the buffer's room goes back (a connection
    /// that sent one large command and idles holds only a small buffer).
    fn give_back_room(&mut self) {
        if self.buf.capacity() > 4 * PENDING_BASE && self.buf.len() < PENDING_BASE {
            let mut smaller = BytesMut::with_capacity(PENDING_BASE);
            smaller.extend_from_slice(&self.buf);
            self.buf = smaller;
        }
    }

    /// Bytes the reader holds in its buffer (for tests).
    #[cfg(test)]
    fn room(&self) -> usize {
        self.buf.capacity()
    }

    /// The stream, for reading what is left (draining before a close).
    pub fn into_inner(self) -> R {
        self.inner
    }
}

/// Parses one command at the start of `buf`, going on from `progress`
/// (what earlier calls read of it; the buffer only grows meanwhile).
fn parse(buf: &[u8], limits: &RespLimits, progress: &mut Progress) -> Result<Parsed, RespError> {
    let Some(&first) = buf.first() else {
        return Ok(Parsed::Incomplete);
    };
    if first != b'*' {
        return parse_inline(buf, limits);
    }
    let count = match progress.count {
        Some(count) => count,
        None => {
            let Some((count, at)) = line_number(buf, 1, limits.max_args)? else {
                return Ok(Parsed::Incomplete);
            };
            progress.count = Some(count);
            progress.at = at;
            progress.args = Vec::with_capacity(count.min(64));
            count
        }
    };
    while progress.args.len() < count {
        let Some((arg, next)) = parse_bulk(buf, progress.at, progress.total, limits)? else {
            return Ok(Parsed::Incomplete);
        };
        progress.total += arg.len();
        progress.args.push(arg);
        progress.at = next;
    }
    let done = std::mem::take(progress);
    debug_assert_eq!(done.args.len(), count, "every argument read");
    Ok(Parsed::Command(done.args, done.at))
}

/// The bulk string at `at` (`$len\r\nbytes\r\n`) and where the next one
/// starts; None if it has not all arrived. `total`: the command's bytes
/// before it, against the command's limit.
fn parse_bulk(
    buf: &[u8],
    at: usize,
    total: usize,
    limits: &RespLimits,
) -> Result<Option<(Bytes, usize)>, RespError> {
    match buf.get(at) {
        None => return Ok(None),
        Some(b'$') => {}
        Some(&b) => {
            return Err(RespError::Protocol(format!(
                "expected '$', got '{}'",
                char::from(b).escape_default()
            )))
        }
    }
    let Some((len, start)) = line_number(buf, at + 1, limits.max_arg_bytes)? else {
        return Ok(None);
    };
    if total.saturating_add(len) > limits.max_command_bytes {
        return Err(RespError::TooLarge(format!(
            "command longer than {} bytes",
            limits.max_command_bytes
        )));
    }
    let end = start + len;
    let Some(arg) = buf.get(start..end) else {
        return Ok(None);
    };
    match buf.get(end..end + 2) {
        None | Some([_]) => Ok(None),
        Some(b"\r\n") => Ok(Some((Bytes::copy_from_slice(arg), end + 2))),
        Some(_) => Err(RespError::Protocol("bulk string not ended by CRLF".into())),
    }
}

/// An inline command: one line of words (what `telnet` sends).
fn parse_inline(buf: &[u8], limits: &RespLimits) -> Result<Parsed, RespError> {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > limits.max_inline_bytes {
            return Err(RespError::TooLarge("too big inline request".into()));
        }
        return Ok(Parsed::Incomplete);
    };
    let line = buf.get(..nl).unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let words = line
        .split(|b| b.is_ascii_whitespace())
        .filter(|w| !w.is_empty());
    if words.clone().count() > limits.max_args {
        return Err(RespError::TooLarge(format!(
            "more than {} arguments",
            limits.max_args
        )));
    }
    let args = words.map(Bytes::copy_from_slice).collect();
    Ok(Parsed::Command(args, nl + 1))
}

/// The number on the line starting at `at` (after a type byte), and where
/// the next line starts; refused above `max` or when not a number.
fn line_number(buf: &[u8], at: usize, max: usize) -> Result<Option<(usize, usize)>, RespError> {
    let rest = buf.get(at..).unwrap_or_default();
    let Some(cr) = rest.iter().position(|&b| b == b'\r') else {
        if rest.len() > 20 {
            return Err(RespError::Protocol("invalid length".into()));
        }
        return Ok(None);
    };
    match rest.get(cr + 1) {
        None => return Ok(None),
        Some(b'\n') => {}
        Some(_) => return Err(RespError::Protocol("line not ended by CRLF".into())),
    }
    let digits = rest.get(..cr).unwrap_or_default();
    let n: usize = std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse().ok())
        .ok_or_else(|| RespError::Protocol("invalid length".into()))?;
    if n > max {
        return Err(RespError::TooLarge(format!(
            "length {n} over the limit of {max}"
        )));
    }
    Ok(Some((n, at + cr + 2)))
}

/// A reply, written in the connection's protocol version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+text`
    Simple(String),
    /// `-ERR text` (the text starts with its error code).
    Error(String),
    /// `:n`
    Int(i64),
    /// `$len bytes`
    Bulk(Bytes),
    /// RESP2 `$-1`, RESP3 `_`.
    Null,
    /// `*n ...`
    Array(Vec<Reply>),
    /// RESP3 `%n ...`; RESP2 a flat array of keys and values.
    Map(Vec<(Reply, Reply)>),
}

impl Reply {
    /// `+OK`
    pub fn ok() -> Reply {
        Reply::Simple("OK".into())
    }

    /// A bulk string or null.
    pub fn bulk_or_null(v: Option<Bytes>) -> Reply {
        v.map_or(Reply::Null, Reply::Bulk)
    }

    /// A bulk string of text.
    pub fn text(s: impl Into<String>) -> Reply {
        Reply::Bulk(Bytes::from(s.into().into_bytes()))
    }

    /// Appends the reply to `out` in RESP `version` (2 or 3).
    pub fn encode(&self, version: u8, out: &mut Vec<u8>) {
        let line = |out: &mut Vec<u8>, tag: u8, body: &[u8]| {
            out.push(tag);
            out.extend_from_slice(body);
            out.extend_from_slice(b"\r\n");
        };
        match self {
            Reply::Simple(s) => line(out, b'+', &one_line(s)),
            Reply::Error(s) => line(out, b'-', &one_line(s)),
            Reply::Int(n) => line(out, b':', n.to_string().as_bytes()),
            Reply::Bulk(b) => {
                line(out, b'$', b.len().to_string().as_bytes());
                out.extend_from_slice(b);
                out.extend_from_slice(b"\r\n");
            }
            Reply::Null if version >= 3 => out.extend_from_slice(b"_\r\n"),
            Reply::Null => out.extend_from_slice(b"$-1\r\n"),
            Reply::Array(items) => {
                line(out, b'*', items.len().to_string().as_bytes());
                for item in items {
                    item.encode(version, out);
                }
            }
            Reply::Map(pairs) if version >= 3 => {
                line(out, b'%', pairs.len().to_string().as_bytes());
                for (k, v) in pairs {
                    k.encode(version, out);
                    v.encode(version, out);
                }
            }
            Reply::Map(pairs) => {
                line(out, b'*', (pairs.len() * 2).to_string().as_bytes());
                for (k, v) in pairs {
                    k.encode(version, out);
                    v.encode(version, out);
                }
            }
        }
    }
}

/// A simple string or error never breaks its line.
fn one_line(s: &str) -> Vec<u8> {
    s.bytes()
        .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b })
        .collect()
}

/// Encodes a command as an array of bulk strings (what a client sends).
pub fn encode_command(args: &[Bytes], out: &mut Vec<u8>) {
    Reply::Array(args.iter().cloned().map(Reply::Bulk).collect()).encode(2, out);
}

/// Reads one whole reply, of any type and nesting, and returns its raw
/// bytes (to relay it as it is). Bounded: at most `max_bytes`. A reply
/// that arrives in pieces is scanned once, each piece from where the last
/// stopped.
pub async fn read_raw_reply<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    max_bytes: usize,
) -> Result<Bytes, RespError> {
    let mut scan = RawScan::default();
    loop {
        if let Some(len) = scan.advance(buf)? {
            return Ok(buf.split_to(len).freeze());
        }
        if buf.len() > max_bytes {
            return Err(RespError::TooLarge("reply over the limit".into()));
        }
        buf.reserve(16 * 1024);
        if reader.read_buf(buf).await? == 0 {
            return Err(RespError::Truncated);
        }
    }
}

/// Most aggregates nested in a reply.
const MAX_REPLY_DEPTH: usize = 32;

/// Where the scan of one raw reply stands, kept between reads.
#[derive(Debug, Default)]
struct RawScan {
    /// The first byte not scanned yet (always the start of an element).
    pos: usize,
    /// Elements still to come in each aggregate open around `pos`,
    /// innermost last; each is at least 1.
    open: Vec<u64>,
}

impl RawScan {
    /// Scans on from where it stopped: the length of the whole reply once
    /// it has all arrived in `buf`.
    fn advance(&mut self, buf: &[u8]) -> Result<Option<usize>, RespError> {
        loop {
            let Some((tag, n, after)) = element_header(buf, self.pos)? else {
                return Ok(None);
            };
            let end = match tag {
                b'+' | b'-' | b':' | b'_' | b'#' | b',' | b'(' => after,
                b'$' | b'!' | b'=' => {
                    let end = after.saturating_add(n.max(0) as usize + 2);
                    if n >= 0 && buf.len() < end {
                        return Ok(None);
                    }
                    if n < 0 {
                        after
                    } else {
                        end
                    }
                }
                b'*' | b'%' | b'~' | b'>' | b'|' => {
                    let per_item = if tag == b'%' || tag == b'|' { 2 } else { 1 };
                    let items = (n.max(0) as u64).saturating_mul(per_item);
                    if items > 0 {
                        if self.open.len() >= MAX_REPLY_DEPTH {
                            return Err(RespError::Protocol("reply nested too deeply".into()));
                        }
                        self.open.push(items);
                        self.pos = after;
                        continue;
                    }
                    after
                }
                other => {
                    return Err(RespError::Protocol(format!(
                        "unknown reply type '{}'",
                        char::from(other).escape_default()
                    )))
                }
            };
            debug_assert!(end > self.pos, "every element takes bytes");
            self.pos = end;
            // An element ended: it may end the aggregates around it too.
            loop {
                let Some(left) = self.open.last_mut() else {
                    return Ok(Some(self.pos));
                };
                *left -= 1;
                if *left > 0 {
                    break;
                }
                self.open.pop();
            }
        }
    }
}

/// The type byte, the number in the header line and where the line ends,
/// of the element starting at `at`; None until its header line arrived.
fn element_header(buf: &[u8], at: usize) -> Result<Option<(u8, i64, usize)>, RespError> {
    let Some(&tag) = buf.get(at) else {
        return Ok(None);
    };
    let rest = buf.get(at + 1..).unwrap_or_default();
    let Some(cr) = rest.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let after = at + 1 + cr + 2;
    let counted = matches!(tag, b'$' | b'!' | b'=' | b'*' | b'%' | b'~' | b'>' | b'|');
    if !counted {
        return Ok(Some((tag, 0, after)));
    }
    let header = rest.get(..cr).unwrap_or_default();
    let n = std::str::from_utf8(header)
        .ok()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| RespError::Protocol("bad length in reply".into()))?;
    Ok(Some((tag, n, after)))
}

/// The length of the whole reply at the start of `buf`, if it has all
/// arrived (a scan from the start).
#[cfg(test)]
fn raw_reply_len(buf: &[u8]) -> Result<Option<usize>, RespError> {
    RawScan::default().advance(buf)
}

#[cfg(test)]
// Test code: its inputs are fixed here, not from a peer, disk or user; an
// unwrap that fails is how a test reports.
mod tests {
    use super::*;

    const LIMITS: RespLimits = RespLimits {
        max_args: 16,
        max_arg_bytes: 64,
        max_command_bytes: 128,
        max_inline_bytes: 64,
    };

    fn parse_all(input: &[u8]) -> Result<Vec<Vec<Bytes>>, RespError> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < input.len() {
            match parse(&input[at..], &LIMITS, &mut Progress::default())? {
                Parsed::Incomplete => break,
                Parsed::Command(args, used) => {
                    out.push(args);
                    at += used;
                }
            }
        }
        Ok(out)
    }

    #[test]
    fn arrays_and_inline_commands_parse_and_a_partial_one_waits() {
        let cmds = parse_all(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nPING\r\n*1\r\n$4\r\nPI").unwrap();
        assert_eq!(cmds.len(), 2);
        assert_eq!(cmds[0], vec![Bytes::from("GET"), Bytes::from("k")]);
        assert_eq!(cmds[1], vec![Bytes::from("PING")]);
        let binary = parse_all(b"*1\r\n$3\r\na\r\n\r\n").unwrap();
        assert_eq!(
            binary[0],
            vec![Bytes::from("a\r\n")],
            "bulk strings hold any bytes"
        );
    }

    /// Feeds `input` to the parser `chunk` bytes at a time, as reads would
    /// deliver it, keeping its progress between reads.
    fn parse_in_chunks(input: &[u8], chunk: usize) -> Result<Vec<Vec<Bytes>>, RespError> {
        let (mut out, mut buf, mut progress) = (Vec::new(), Vec::new(), Progress::default());
        for piece in input.chunks(chunk.max(1)) {
            buf.extend_from_slice(piece);
            while let Parsed::Command(args, used) = parse(&buf, &LIMITS, &mut progress)? {
                out.push(args);
                buf.drain(..used);
            }
        }
        Ok(out)
    }

    #[test]
    fn a_large_command_arriving_holds_a_charge_and_its_room_goes_back() {
        use crate::client::budget::MemoryBudget;
        use tokio::io::AsyncWriteExt;
        let limits = RespLimits {
            max_args: 4,
            max_arg_bytes: 512 << 10,
            max_command_bytes: 1 << 20,
            max_inline_bytes: 1024,
        };
        let budget = MemoryBudget::new(4 << 20);
        let full = budget.available();
        let mut command = format!("*2\r\n$4\r\nECHO\r\n${}\r\n", 400 << 10).into_bytes();
        command.extend(std::iter::repeat_n(b'x', 400 << 10));
        command.extend_from_slice(b"\r\n");
        // The unwraps below are on an in-memory pipe the test owns and on
        // a command it built whole: a failure is the test failing.
        crate::test_util::block_on(async {
            let (mut client, server) = tokio::io::duplex(1 << 20);
            let mut reader = RespReader::new(server, limits, b"").charging(budget.connection());
            // Test only: into the test's own in-memory pipe, with room for it all.
            client.write_all(&command[..300 << 10]).await.unwrap();
            let waiting =
                tokio::time::timeout(std::time::Duration::from_millis(50), reader.next_command());
            assert!(waiting.await.is_err(), "the command has not all arrived");
            assert!(
                full - budget.available() >= 250 << 10,
                "what arrived is charged: {} bytes",
                full - budget.available()
            );
            // Test only: into the test's own in-memory pipe, with room for it all.
            client.write_all(&command[300 << 10..]).await.unwrap();
            // Test only: the command the test just wrote whole; a failure is the finding.
            let args = reader.next_command().await.unwrap().unwrap();
            assert_eq!(args.get(1).map(Bytes::len), Some(400 << 10));
            assert_eq!(budget.available(), full, "the charge is the command's now");
            assert!(reader.room() <= 4 * PENDING_BASE, "room {}", reader.room());
        });
    }

    #[test]
    fn an_inline_command_with_too_many_words_is_refused() {
        assert!(matches!(
            parse_all(b"a a a a a a a a a a a a a a a a a\r\n"),
            Err(RespError::TooLarge(_))
        ));
        // Test only: a fixed, valid inline command.
        assert_eq!(parse_all(b"a a a\r\n").unwrap().len(), 1);
    }

    #[test]
    fn a_command_arriving_in_pieces_is_read_once_whole() {
        let input = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nv\r\nxy\r\n*1\r\n$4\r\nPING\r\n";
        let whole = parse_all(input).unwrap();
        for chunk in 1..input.len() {
            assert_eq!(
                parse_in_chunks(input, chunk).unwrap(),
                whole,
                "chunks of {chunk}"
            );
        }
        // The parser keeps what it read: a large command is not re-read
        // from its start on every read that brings more of it.
        let mut progress = Progress::default();
        let part = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nv";
        assert!(matches!(
            parse(part, &LIMITS, &mut progress),
            Ok(Parsed::Incomplete)
        ));
        assert_eq!(progress.args.len(), 2, "two arguments read, kept");
    }

    proptest::proptest! {
        /// Any bytes, in any pieces: the parser answers or refuses, never
        /// panics, and never holds more than the limits allow.
        #[test]
        fn arbitrary_bytes_are_parsed_or_refused(
            input in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
            chunk in 1usize..32,
        ) {
            if let Ok(cmds) = parse_in_chunks(&input, chunk) {
                for args in cmds {
                    proptest::prop_assert!(args.len() <= LIMITS.max_args);
                    proptest::prop_assert!(args.iter().map(Bytes::len).sum::<usize>() <= LIMITS.max_command_bytes.max(LIMITS.max_inline_bytes));
                }
            }
        }

        /// A command encoded as clients send it reads back the same,
        /// however the stream cuts it.
        #[test]
        fn encoded_commands_read_back_in_any_pieces(
            args in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..12), 1..8),
            chunk in 1usize..40,
        ) {
            let args: Vec<Bytes> = args.into_iter().map(Bytes::from).collect();
            let mut input = Vec::new();
            encode_command(&args, &mut input);
            encode_command(&args, &mut input);
            proptest::prop_assert_eq!(parse_in_chunks(&input, chunk).unwrap(), vec![args.clone(), args]);
        }
    }

    #[test]
    fn lengths_beyond_the_limits_and_garbage_are_refused() {
        assert!(matches!(parse_all(b"*17\r\n"), Err(RespError::TooLarge(_))));
        assert!(matches!(
            parse_all(b"*1\r\n$65\r\n"),
            Err(RespError::TooLarge(_))
        ));
        assert!(matches!(
            parse_all(b"*1\r\n:3\r\n"),
            Err(RespError::Protocol(_))
        ));
        assert!(matches!(parse_all(b"*x\r\n"), Err(RespError::Protocol(_))));
        assert!(matches!(
            parse_all(b"*1\r\n$1\r\nab\r\n"),
            Err(RespError::Protocol(_))
        ));
        let long = vec![b'a'; 100];
        assert!(matches!(parse_all(&long), Err(RespError::TooLarge(_))));
    }

    #[test]
    fn replies_encode_in_both_versions_and_raw_lengths_match() {
        let reply = Reply::Array(vec![
            Reply::ok(),
            Reply::Null,
            Reply::Int(-3),
            Reply::Bulk(Bytes::from("x\r\ny")),
            Reply::Map(vec![(Reply::text("a"), Reply::Int(1))]),
            Reply::Error("ERR no\nway".into()),
        ]);
        let mut v2 = Vec::new();
        reply.encode(2, &mut v2);
        assert_eq!(
            v2,
            b"*6\r\n+OK\r\n$-1\r\n:-3\r\n$4\r\nx\r\ny\r\n*2\r\n$1\r\na\r\n:1\r\n-ERR no way\r\n"
        );
        let mut v3 = Vec::new();
        reply.encode(3, &mut v3);
        assert!(v3.windows(3).any(|w| w == b"_\r\n") && v3.contains(&b'%'));
        for bytes in [&v2, &v3] {
            assert_eq!(raw_reply_len(bytes).unwrap(), Some(bytes.len()));
            assert_eq!(raw_reply_len(&bytes[..bytes.len() - 1]).unwrap(), None);
            // Fed a byte at a time, the scan resumes where it stopped and
            // ends exactly at the reply's end.
            let mut scan = RawScan::default();
            for end in 0..bytes.len() {
                assert_eq!(scan.advance(&bytes[..end]).unwrap(), None, "at {end}");
            }
            assert_eq!(scan.advance(bytes).unwrap(), Some(bytes.len()));
        }
    }

    #[test]
    fn a_raw_reply_scan_refuses_deep_nesting_and_unknown_types() {
        let deep = "*1\r\n".repeat(MAX_REPLY_DEPTH + 1) + ":1\r\n";
        assert!(raw_reply_len(deep.as_bytes()).is_err());
        let ok = "*1\r\n".repeat(MAX_REPLY_DEPTH) + ":1\r\n";
        assert_eq!(raw_reply_len(ok.as_bytes()).unwrap(), Some(ok.len()));
        assert!(raw_reply_len(b"?x\r\n").is_err());
        assert_eq!(raw_reply_len(b"*-1\r\n").unwrap(), Some(5), "a null array");
        assert_eq!(
            raw_reply_len(b"*0\r\n:1\r\n").unwrap(),
            Some(4),
            "an empty one"
        );
    }
}
