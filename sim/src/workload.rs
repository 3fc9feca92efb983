//! Simulated clients: each runs on its own madsim node, speaks the real text
//! protocol to the cluster, follows redirects, retries what is safe to retry,
//! and records every operation with its invoke and return times.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kv_net::client::retry::{text_verdict, Endpoints, Verdict};
use kv_net::client::text::{parse_response, Response};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout, Instant};

use crate::history::{HistoryRecorder, Input, Output};

/// How the clients behave.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    /// Keys are `k0 .. k{keys-1}`: a small key space makes conflicts likely.
    pub keys: u64,
    /// Give up on one attempt after this long (the operation becomes indeterminate).
    pub request_timeout: Duration,
    /// Stop starting new operations at this (simulated) instant.
    pub stop_at: Instant,
    /// Pause between operations, drawn up to this.
    pub think_max: Duration,
}

/// One client connection, re-established as needed.
struct Conn {
    addr: SocketAddr,
    stream: BufReader<TcpStream>,
}

/// The result of sending one request line.
enum Attempt {
    /// A response line.
    Answer(Response),
    /// No answer; the request may or may not have reached the server.
    Lost,
    /// Could not connect; the request surely was not sent.
    Unreachable,
}

/// Counter keys (`c0 .. c2`): only INCR writes them, so the run can check
/// that every increment applied exactly once.
pub const COUNTERS: u64 = 3;

/// A client: its id, the cluster's client addresses, and its history recorder.
pub struct Client {
    id: u64,
    /// The nodes, and the one this client talks to now.
    endpoints: Endpoints,
    conn: Option<Conn>,
    rng: ChaCha8Rng,
    cfg: WorkloadConfig,
    history: Arc<HistoryRecorder>,
    counter: u64,
    /// Its exactly-once session, once opened (0: none yet), and the next
    /// write's sequence number in it.
    session: u64,
    next_seq: u64,
}

impl Client {
    /// A client with a seeded generator.
    pub fn new(
        id: u64,
        addrs: Vec<SocketAddr>,
        seed: u64,
        cfg: WorkloadConfig,
        history: Arc<HistoryRecorder>,
    ) -> Self {
        let rng = ChaCha8Rng::seed_from_u64(seed ^ (id << 32));
        // The harness builds every cluster with nodes.
        let endpoints = Endpoints::new(addrs, id as usize).expect("a simulated cluster has nodes");
        Client {
            id,
            endpoints,
            conn: None,
            rng,
            cfg,
            history,
            counter: 0,
            session: 0,
            next_seq: 1,
        }
    }

    /// Runs operations until `stop_at`: in an exactly-once session, so a
    /// write whose outcome is unknown is sent again (on another node) until
    /// its answer is known.
    pub async fn run(mut self) {
        while self.session == 0 && Instant::now() < self.cfg.stop_at {
            self.open_session().await;
        }
        while Instant::now() < self.cfg.stop_at {
            self.maybe_wander();
            let input = self.next_input();
            let op = self.history.invoke(self.id, input.clone());
            let output = self.execute(&input).await;
            match output {
                Some(out) => self.history.complete(op, out),
                None => self.history.timeout(op),
            }
            let think = self
                .rng
                .random_range(0..=self.cfg.think_max.as_millis() as u64);
            sleep(Duration::from_millis(think)).await;
        }
    }

    /// Opens an exactly-once session (tries once; a session whose answer is
    /// lost is simply never used).
    async fn open_session(&mut self) {
        let deadline = Instant::now() + self.cfg.request_timeout * 4;
        while Instant::now() < deadline {
            match self.attempt(b"SESSION\n").await {
                Attempt::Answer(Response::Session(id)) => {
                    self.session = id;
                    return;
                }
                Attempt::Answer(Response::Redirect(addr)) => {
                    self.endpoints.redirect(&addr);
                    self.conn = None;
                }
                _ => {
                    self.rotate();
                    sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Runs `input` once, starting at node index `at`, and records it in
    /// the history like any operation (the nemesis's own probes).
    pub async fn once_at(&mut self, at: usize, input: Input) -> Option<Output> {
        let before = self.endpoints.current();
        self.endpoints.go_to(at);
        if self.endpoints.current() != before {
            self.conn = None;
        }
        let op = self.history.invoke(self.id, input.clone());
        let output = self.execute(&input).await;
        match &output {
            Some(out) => self.history.complete(op, out.clone()),
            None => self.history.timeout(op),
        }
        output
    }

    /// Writes `key` until one attempt is acknowledged or `deadline` passes.
    pub async fn write_until_ok(&mut self, key: &[u8], deadline: Instant) -> bool {
        while Instant::now() < deadline {
            self.counter += 1;
            let input = Input::Set {
                key: Bytes::copy_from_slice(key),
                value: Bytes::from(format!("c{}-{}", self.id, self.counter)),
            };
            if let Some(Output::Ok) = self.execute(&input).await {
                return true;
            }
            sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// Writes keys `p0 .. p{keys-1}` with `value_bytes`-byte values in
    /// MSETs of 100, each until acknowledged; false if `deadline` passes first.
    pub async fn load(&mut self, keys: u64, value_bytes: usize, deadline: Instant) -> bool {
        let value = Bytes::from("v".repeat(value_bytes));
        let mut next = 0;
        while next < keys {
            let end = (next + 100).min(keys);
            let input = Input::MSet {
                pairs: (next..end)
                    .map(|i| (Bytes::from(format!("p{i:08}")), value.clone()))
                    .collect(),
            };
            loop {
                if Instant::now() >= deadline {
                    return false;
                }
                if let Some(Output::Ok) = self.execute(&input).await {
                    break;
                }
                sleep(Duration::from_millis(100)).await;
            }
            next = end;
        }
        true
    }

    fn next_input(&mut self) -> Input {
        let key = Bytes::from(format!("k{}", self.rng.random_range(0..self.cfg.keys)));
        self.counter += 1;
        // Values are unique across the whole run: client id and a counter.
        let value = Bytes::from(format!("c{}-{}", self.id, self.counter));
        match self.rng.random_range(0..110) {
            100..=104 => Input::Incr {
                key: Bytes::from(format!("c{}", self.rng.random_range(0..COUNTERS))),
                by: 1,
            },
            105..=109 => Input::Get {
                key: Bytes::from(format!("c{}", self.rng.random_range(0..COUNTERS))),
            },
            0..=39 => Input::Get { key },
            40..=64 => Input::Set { key, value },
            65..=69 => {
                // Two keys at once: the second may equal the first.
                let other = Bytes::from(format!("k{}", self.rng.random_range(0..self.cfg.keys)));
                let second = Bytes::from(format!("c{}-{}m", self.id, self.counter));
                Input::MSet {
                    pairs: vec![(key, value), (other, second)],
                }
            }
            70..=79 => Input::Del { key },
            _ => {
                let expected = Bytes::from(format!(
                    "c{}-{}",
                    self.rng.random_range(1..=self.id.max(1) + 3),
                    self.rng.random_range(1..=self.counter)
                ));
                Input::Cas {
                    key,
                    expected,
                    new: value,
                }
            }
        }
    }

    fn line(input: &Input) -> Vec<u8> {
        let text = match input {
            Input::Get { key } => format!("GET {}\n", String::from_utf8_lossy(key)),
            Input::Set { key, value } => format!(
                "SET {} {}\n",
                String::from_utf8_lossy(key),
                String::from_utf8_lossy(value)
            ),
            Input::Del { key } => format!("DEL {}\n", String::from_utf8_lossy(key)),
            Input::Cas { key, expected, new } => format!(
                "CAS {} {} {}\n",
                String::from_utf8_lossy(key),
                String::from_utf8_lossy(expected),
                String::from_utf8_lossy(new)
            ),
            Input::MSet { pairs } => {
                let mut line = String::from("MSET");
                for (k, v) in pairs {
                    line.push_str(&format!(
                        " {} {}",
                        String::from_utf8_lossy(k),
                        String::from_utf8_lossy(v)
                    ));
                }
                line + "\n"
            }
            Input::Incr { key, by } => format!("INCR {} {by}\n", String::from_utf8_lossy(key)),
            Input::Status => "STATUS\n".to_string(),
            Input::TransferLeader { to: None } => "TRANSFER-LEADER\n".to_string(),
            Input::TransferLeader { to: Some(id) } => format!("TRANSFER-LEADER {id}\n"),
            // The Redis-only operations have no text form; the workload
            // never draws them (`next_input`), and a PING changes nothing.
            _ => "PING\n".to_string(),
        };
        text.into_bytes()
    }

    /// Runs one operation to a definite answer, or None if its outcome is
    /// unknown. A write goes in the client's session: when its outcome is
    /// unknown it is sent again, with the same sequence number, on another
    /// node, and the session answers it once (exactly once).
    async fn execute(&mut self, input: &Input) -> Option<Output> {
        let mut line = Self::line(input);
        let in_session = self.session != 0 && !input.is_read();
        if in_session {
            let seq = self.next_seq;
            self.next_seq += 1;
            let mut tagged = format!("@{}/{seq}/{seq} ", self.session).into_bytes();
            tagged.extend_from_slice(&line);
            line = tagged;
        }
        let deadline = Instant::now() + self.cfg.request_timeout * 4;
        loop {
            if Instant::now() >= deadline {
                // Every attempt so far surely failed, or their outcome is
                // unknown: indeterminate.
                return None;
            }
            match self.attempt(&line).await {
                Attempt::Answer(resp) => match resp {
                    Response::Ok => return Some(Output::Ok),
                    Response::Value(v) => return Some(Output::Value(v)),
                    Response::NotFound => return Some(Output::NotFound),
                    Response::Fail(current) => return Some(Output::CasFailed(current)),
                    Response::Int(n) => return Some(Output::Int(n)),
                    Response::Redirect(addr) => {
                        self.endpoints.redirect(&addr);
                        self.conn = None;
                    }
                    Response::Err(msg) => match text_verdict(&msg) {
                        // Surely not done: again, elsewhere if this node
                        // cannot serve.
                        Verdict::Retry { elsewhere, .. } => {
                            if elsewhere {
                                self.rotate();
                            }
                            sleep(Duration::from_millis(50)).await;
                        }
                        // Outcome unknown (timeout, leadership lost,
                        // shutting down): in a session, ask again elsewhere.
                        Verdict::Unknown(_) if in_session => {
                            self.rotate();
                            sleep(Duration::from_millis(50)).await;
                        }
                        Verdict::Unknown(_) | Verdict::Final => {
                            self.conn = None;
                            return None;
                        }
                    },
                    Response::Pong | Response::Status(_) | Response::Session(_) => {
                        self.conn = None;
                        return None;
                    }
                },
                Attempt::Unreachable => {
                    self.rotate();
                    sleep(Duration::from_millis(50)).await;
                }
                Attempt::Lost if in_session => {
                    self.conn = None;
                    self.rotate();
                }
                Attempt::Lost => {
                    self.conn = None;
                    self.rotate();
                    return None;
                }
            }
        }
    }

    /// Like a client library that spreads requests over every endpoint,
    /// one operation in four starts at a node drawn at random (a follower
    /// redirects it), so requests also reach a deposed leader that still
    /// believes it leads.
    fn maybe_wander(&mut self) {
        if !self.rng.random_bool(0.25) {
            return;
        }
        let before = self.endpoints.current();
        let next = self.rng.random_range(0..self.endpoints.all().len());
        self.endpoints.go_to(next);
        if self.endpoints.current() != before {
            self.conn = None;
        }
    }

    fn rotate(&mut self) {
        self.conn = None;
        self.endpoints.rotate();
    }

    async fn attempt(&mut self, line: &[u8]) -> Attempt {
        if self.conn.is_none() {
            let addr = self.endpoints.current();
            match timeout(self.cfg.request_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    self.conn = Some(Conn {
                        addr,
                        stream: BufReader::new(stream),
                    })
                }
                _ => return Attempt::Unreachable,
            }
        }
        let Some(conn) = self.conn.as_mut() else {
            return Attempt::Unreachable;
        };
        let exchange = async {
            conn.stream.get_mut().write_all(line).await?;
            conn.stream.get_mut().flush().await?;
            let mut buf = Vec::new();
            let n = conn.stream.read_until(b'\n', &mut buf).await?;
            Ok::<_, std::io::Error>((n, buf))
        };
        match timeout(self.cfg.request_timeout, exchange).await {
            Ok(Ok((n, buf))) if n > 0 && buf.ends_with(b"\n") => {
                let text = &buf[..buf.len() - 1];
                match parse_response(text) {
                    Ok(resp) => Attempt::Answer(resp),
                    Err(_) => Attempt::Lost,
                }
            }
            _ => {
                tracing::debug!(addr = %conn.addr, "request lost");
                Attempt::Lost
            }
        }
    }
}
