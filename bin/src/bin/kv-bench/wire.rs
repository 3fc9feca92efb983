//! One benchmark connection's wire: requests out, answers in, over either
//! client protocol, with every answer sorted into what the loop does next.

use bytes::Bytes;
use kv_net::client::binary::MAGIC;
use kv_net::client::retry::{binary_verdict, text_verdict, Verdict};
use kv_net::client::text::{parse_response, Response};
use kv_net::frame::{encode_frame, FrameReader};
use kv_proto::client::{self as pb, error::Kind, request::Op};
use kv_proto::prost::Message as _;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::Protocol;

/// What the benchmark asks.
#[derive(Debug, Clone)]
pub enum BenchOp {
    /// GET key
    Get(Bytes),
    /// SET key value
    Set(Bytes, Bytes),
    /// MSET of several pairs (one log entry; binary protocol only).
    MSet(Vec<(Bytes, Bytes)>),
    /// Open an exactly-once session.
    OpenSession,
}

impl BenchOp {
    /// Whether it writes (and so goes in the connection's session).
    pub fn is_write(&self) -> bool {
        matches!(self, BenchOp::Set(..) | BenchOp::MSet(_))
    }
}

/// A write's session tag: `(session, seq, acked_below)`.
pub type Tag = (u64, u64, u64);

/// An answer, as the benchmark loop sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Served (a value, not found, OK).
    Done,
    /// A session was opened: its id.
    Session(u64),
    /// Not the leader: go there and send it again.
    Redirect(String),
    /// Surely not done; send it again (`why` names why), to another node
    /// if `elsewhere`.
    Retry {
        /// Why (for the counts).
        why: &'static str,
        /// Whether another node should get it.
        elsewhere: bool,
    },
    /// It may or may not have happened (the kind names why): a write in a
    /// session is sent again, anything else counts as failed.
    Unknown(&'static str),
    /// Failed, definitely (the kind names why).
    Failed(&'static str),
    /// The node is stopping: every request on this connection still
    /// unanswered was not read; send them again elsewhere.
    GoAway,
}

/// An error answer as the loop sees it, by the rule every client of the
/// store follows (`kv_net::client::retry`); `definite` names a final one.
fn from_verdict(verdict: Verdict, definite: &'static str) -> Answer {
    match verdict {
        Verdict::Retry { why, elsewhere } => Answer::Retry { why, elsewhere },
        Verdict::Unknown(why) => Answer::Unknown(why),
        Verdict::Final => Answer::Failed(definite),
    }
}

/// The read half of a connection, plain or TLS.
type ReadHalf = Box<dyn AsyncRead + Unpin + Send>;

/// The write half of a connection, plain or TLS.
type WriteHalf = Box<dyn AsyncWrite + Unpin + Send>;

/// One connection's read side.
pub enum Reader {
    /// Answers in request order.
    Text {
        lines: BufReader<ReadHalf>,
        line: String,
        /// Ids of the requests sent, oldest first.
        order: std::collections::VecDeque<u64>,
    },
    /// Answers by id.
    Binary(FrameReader<ReadHalf>),
}

/// One connection's write side.
pub struct Writer {
    half: WriteHalf,
    protocol: Protocol,
    buf: Vec<u8>,
}

/// Opens a connection speaking `protocol`.
pub async fn connect(
    addr: std::net::SocketAddr,
    protocol: Protocol,
    tls: Option<&TlsConnector>,
) -> std::io::Result<(Writer, Reader)> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (read, mut write): (ReadHalf, WriteHalf) = match tls {
        None => {
            let (read, write) = stream.into_split();
            (Box::new(read), Box::new(write))
        }
        Some(tls) => {
            let stream = tls.connect(kv_net::tls::server_name(addr), stream).await?;
            let (read, write) = tokio::io::split(stream);
            (Box::new(read), Box::new(write))
        }
    };
    let reader = match protocol {
        Protocol::Binary => {
            write.write_all(&MAGIC).await?;
            Reader::Binary(FrameReader::new(read, 64 << 20))
        }
        Protocol::Text => Reader::Text {
            lines: BufReader::new(read),
            line: String::new(),
            order: Default::default(),
        },
    };
    let writer = Writer {
        half: write,
        protocol,
        buf: Vec::with_capacity(64 * 1024),
    };
    Ok((writer, reader))
}

impl Writer {
    /// Queues one request, with its session tag if any (sent by `flush`).
    pub fn push(&mut self, id: u64, op: &BenchOp, tag: Option<Tag>, reader: &mut Reader) {
        match self.protocol {
            Protocol::Binary => {
                let op = match op.clone() {
                    BenchOp::Get(key) => Op::Get(pb::Get { key }),
                    BenchOp::Set(key, value) => Op::Set(pb::Set { key, value }),
                    BenchOp::MSet(pairs) => Op::Mset(pb::MSet {
                        pairs: pairs
                            .into_iter()
                            .map(|(key, value)| pb::KeyValue { key, value })
                            .collect(),
                    }),
                    BenchOp::OpenSession => Op::OpenSession(pb::OpenSession {}),
                };
                let (session, seq, acked_below) = tag.unwrap_or_default();
                encode_frame(
                    &pb::Request {
                        id,
                        op: Some(op),
                        session,
                        seq,
                        acked_below,
                    },
                    &mut self.buf,
                );
            }
            Protocol::Text => {
                let line = match op {
                    BenchOp::Get(k) => format!("GET {}\n", String::from_utf8_lossy(k)),
                    BenchOp::Set(k, v) => format!(
                        "SET {} {}\n",
                        String::from_utf8_lossy(k),
                        String::from_utf8_lossy(v)
                    ),
                    // The text protocol has no MSET: the loader refuses it earlier.
                    BenchOp::MSet(_) => "PING\n".to_string(),
                    BenchOp::OpenSession => "SESSION\n".to_string(),
                };
                if let Some((session, seq, acked_below)) = tag {
                    self.buf
                        .extend_from_slice(format!("@{session}/{seq}/{acked_below} ").as_bytes());
                }
                self.buf.extend_from_slice(line.as_bytes());
                if let Reader::Text { order, .. } = reader {
                    order.push_back(id);
                }
            }
        }
    }

    /// Sends what was queued.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            self.half.write_all(&self.buf).await?;
            self.buf.clear();
        }
        Ok(())
    }
}

impl Reader {
    /// The next answer and the id of its request; None when the server
    /// closed the connection.
    pub async fn next(&mut self) -> anyhow::Result<Option<(u64, Answer)>> {
        match self {
            Reader::Binary(frames) => {
                let Some(payload) = frames.next_frame().await? else {
                    return Ok(None);
                };
                let resp = pb::Response::decode(payload)?;
                let goaway = resp.id == 0
                    && matches!(&resp.result, Some(pb::response::Result::Error(e)) if e.kind == Kind::Unavailable as i32);
                if goaway {
                    return Ok(Some((0, Answer::GoAway)));
                }
                Ok(Some((resp.id, binary_answer(resp.result))))
            }
            Reader::Text { lines, line, order } => {
                line.clear();
                if lines.read_line(line).await? == 0 {
                    return Ok(None);
                }
                let id = order.pop_front().unwrap_or(0);
                let text = line.trim_end_matches(['\n', '\r']);
                let answer = match parse_response(text.as_bytes()) {
                    Ok(Response::Redirect(to)) => Answer::Redirect(to),
                    Ok(Response::Err(msg)) => text_error(&msg),
                    Ok(Response::Session(id)) => Answer::Session(id),
                    Ok(_) => Answer::Done,
                    Err(_) => Answer::Failed("unintelligible answer"),
                };
                Ok(Some((id, answer)))
            }
        }
    }
}

fn binary_answer(result: Option<pb::response::Result>) -> Answer {
    use pb::response::Result as R;
    match result {
        Some(R::Redirect(r)) => Answer::Redirect(r.leader),
        Some(R::Error(e)) => {
            let kind = Kind::try_from(e.kind).unwrap_or(Kind::Unknown);
            let definite = if kind == Kind::Refused {
                "refused"
            } else {
                "bad request"
            };
            from_verdict(binary_verdict(kind, &e.message), definite)
        }
        Some(R::Session(s)) => Answer::Session(s.id),
        Some(_) => Answer::Done,
        None => Answer::Failed("empty answer"),
    }
}

fn text_error(msg: &str) -> Answer {
    // A write its session refused: nothing happened, and sending it again
    // would be refused again.
    let refused = msg == kv_engine::kv::NO_SESSION || msg == kv_engine::kv::FORGOTTEN;
    from_verdict(text_verdict(msg), if refused { "refused" } else { "error" })
}
