//! Process-level tests of clients that misbehave: ones that never read
//! their answers, ones beyond the connection limit, and a flood of both
//! with the largest values. None may take the node down, grow its memory
//! past what its flags allow, or keep a well-behaved client waiting.
#![cfg(not(madsim))]
// A test panics on any failure: that is how it reports.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kv_proto::client::{self as pb, request::Op, response::Result as R};
use kv_proto::prost::Message as _;
use support::{binary, connect, proc_status_kib, roundtrip, said, try_request, Cluster};

const MIB: u64 = 1 << 20;

/// A binary request frame (length prefix included).
fn frame(id: u64, op: Op) -> Vec<u8> {
    let payload = pb::Request {
        id,
        op: Some(op),
        ..Default::default()
    }
    .encode_to_vec();
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&payload);
    out
}

fn set(key: &str, value: &[u8]) -> Op {
    Op::Set(pb::Set {
        key: bytes::Bytes::copy_from_slice(key.as_bytes()),
        value: bytes::Bytes::copy_from_slice(value),
    })
}

fn get(key: &str) -> Op {
    Op::Get(pb::Get {
        key: bytes::Bytes::copy_from_slice(key.as_bytes()),
    })
}

/// Stores `value` under `key` through the leader over the binary protocol
/// and returns the leader's id. On a loaded machine the first leader may
/// lose its term before answering; a SET is idempotent, so it is sent
/// again through whichever node leads then.
fn store(c: &Cluster, key: &str, value: &[u8]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let leader_id = c.leader(Duration::from_secs(10));
        let mut s = binary::connect(c.client(leader_id));
        s.write_all(&frame(1, set(key, value))).unwrap();
        let answer = binary::recv(&mut s);
        match answer.as_ref().and_then(|a| a.result.as_ref()) {
            Some(R::Ok(_)) => return leader_id,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            _ => panic!("{answer:?}"),
        }
    }
}

/// Whether `answer` to a read shows the node serving: the answer itself,
/// or word that leadership moved (a loaded machine may cost a leader its
/// term; these tests are about serving, not about who leads).
fn served(answer: &str) -> bool {
    answer.starts_with("VALUE")
        || answer == "NOT_FOUND"
        || answer.starts_with("REDIRECT")
        || answer == "ERR no leader"
        || answer.starts_with("ERR not applied")
}

#[test]
fn a_client_that_never_reads_its_answers_is_disconnected_and_blocks_no_one() {
    let c = Cluster::start(
        "noread",
        3,
        &["--max-answer-bytes", "262144", "--write-timeout-ms", "1000"],
    );
    let value = vec![b'v'; 400 << 10];
    store(&c, "big", &value);
    let leader = c.client(store(&c, "small", b"1"));

    // 200 GETs of 400 KiB each (80 MB of answers), never read.
    let mut hog = binary::connect(leader);
    let mut requests = Vec::new();
    for id in 1..=200 {
        requests.extend(frame(id, get("big")));
    }
    hog.write_all(&requests).unwrap();

    // Everyone else is served as usual meanwhile.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        let asked = Instant::now();
        let answer = try_request(leader, "GET small").unwrap();
        assert!(served(&answer), "{answer}");
        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "{:?}",
            asked.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The hog was cut off: reading now drains what the kernel buffered and
    // then meets the close, far short of all 200 answers.
    hog.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut received = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match hog.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => received += n as u64,
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                panic!("still connected after {received} bytes: the hog was not cut off")
            }
            Err(_) => break, // reset: also closed
        }
    }
    let all = 200 * value.len() as u64;
    assert!(received < all / 2, "received {received} of {all} bytes");
}

#[test]
fn a_refused_connection_is_told_why_and_kv_cli_prints_it() {
    let c = Cluster::start("refused", 3, &["--max-connections", "2"]);
    c.leader(Duration::from_secs(10));
    let node = c.client(1);
    // Two connections served (a PING answered on each) hold both slots;
    // the probes that found the leader may take a moment to be let go.
    let mut held = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while held.len() < 2 && Instant::now() < deadline {
        let mut conn = connect(node);
        if roundtrip(&mut conn, b"PING\n") == "PONG" {
            held.push(conn);
        } else {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    assert_eq!(held.len(), 2, "two connections served");

    // A raw client reads the reason before the close.
    let mut refused = connect(node);
    assert_eq!(
        roundtrip(&mut refused, b"GET x\n"),
        "ERR too many connections"
    );

    for protocol in ["binary", "text"] {
        let out = Command::new(env!("CARGO_BIN_EXE_kv-cli"))
            .args([
                "--addr",
                &node.to_string(),
                "--protocol",
                protocol,
                "--timeout",
                "2",
            ])
            .args(["GET", "x"])
            .output()
            .unwrap();
        let said = said(&out);
        assert!(
            said.contains("too many connections"),
            "kv-cli over {protocol} said: {said}"
        );
        assert_eq!(out.status.code(), Some(4), "refused: exit code 4");
    }
    drop(held);
}

/// A Redis client that pipelines ECHOs of the largest size and never reads
/// the answers: each answer is as large as its command, so the command's
/// share of the request budget is held until its answer is taken for
/// writing, and the node stops reading from the client once the budget is
/// spent, instead of queueing a whole pipeline of answers (256 x 512 KiB).
#[test]
fn a_redis_client_echoing_without_reading_is_held_to_the_request_budget() {
    let c = Cluster::start(
        "echohog",
        3,
        &[
            "--max-request-bytes",
            "4194304",
            "--write-timeout-ms",
            "30000",
        ],
    );
    let leader = c.client(c.leader(Duration::from_secs(10)));
    let mut hog = TcpStream::connect(leader).unwrap();
    hog.set_nonblocking(true).unwrap();
    let arg = vec![b'e'; (512 << 10) - 64];
    let mut command = format!("*2\r\n$4\r\nECHO\r\n${}\r\n", arg.len()).into_bytes();
    command.extend_from_slice(&arg);
    command.extend_from_slice(b"\r\n");

    // Send for as long as the node takes more (until 2 s without progress).
    let mut accepted = 0u64;
    let mut at = 0;
    let mut last_progress = Instant::now();
    let started = Instant::now();
    while last_progress.elapsed() < Duration::from_secs(2)
        && started.elapsed() < Duration::from_secs(20)
    {
        match hog.write(&command[at..]) {
            Ok(n) => {
                accepted += n as u64;
                at = (at + n) % command.len();
                last_progress = Instant::now();
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("the node closed the connection after {accepted} bytes: {e}"),
        }
    }
    // What the node may hold is the budget and about one write of answers;
    // the rest is the kernel's socket buffers both ways (a few MiB each).
    // A whole pipeline of answers would be 128 MiB.
    println!(
        "the node took {} MiB of ECHOs before it stopped reading",
        accepted / MIB
    );
    assert!(accepted < 48 * MIB, "the node took {} MiB", accepted / MIB);
    // Everyone else is served meanwhile (by the leader, or told where it
    // went if the load cost it its term).
    let answer = try_request(leader, "GET nothing").unwrap();
    assert!(served(&answer), "{answer}");
    drop(hog);
}

/// A follower forwards a Redis pipeline of large reads to the leader and
/// relays the answers as they come, never holding the whole pipeline's
/// answers (64 MGETs of 4 values of 512 KiB: 128 MiB) while its client
/// does not read; once the client reads, every byte arrives, in order.
#[test]
fn a_pipeline_of_large_reads_through_a_follower_is_relayed_not_hoarded() {
    let c = Cluster::start("relay", 3, &["--write-timeout-ms", "30000"]);
    let value = vec![b'r'; (512 << 10) - 64];
    let keys: Vec<String> = (0..4).map(|i| format!("big{i}")).collect();
    let mut leader_id = 0;
    for key in &keys {
        leader_id = store(&c, key, &value);
    }
    let follower_id = (1..=3).find(|&id| id != leader_id).unwrap();
    let pid = c.pid(follower_id).unwrap();
    let idle_kib = proc_status_kib(pid, "VmRSS").unwrap();

    let mut mget = format!("*{}\r\n$4\r\nMGET\r\n", keys.len() + 1);
    for key in &keys {
        mget.push_str(&format!("${}\r\n{key}\r\n", key.len()));
    }
    let mut hog = TcpStream::connect(c.client(follower_id)).unwrap();
    hog.write_all(mget.repeat(64).as_bytes()).unwrap();
    // Longer than the request timeout (5 s): a client slow to read gets
    // every answer all the same (the write timeout is what bounds it).
    std::thread::sleep(Duration::from_secs(6));
    let grew_mib = proc_status_kib(pid, "VmHWM")
        .unwrap()
        .saturating_sub(idle_kib)
        / 1024;
    println!("the follower grew by {grew_mib} MiB while its client did not read");
    assert!(grew_mib < 64, "the follower grew by {grew_mib} MiB");

    let one = format!(
        "*{}\r\n{}",
        keys.len(),
        format!("${}\r\n{}\r\n", value.len(), "r".repeat(value.len())).repeat(keys.len())
    );
    let expected = 64 * one.len() as u64;
    hog.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut received = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    let mut head = Vec::new();
    while received < expected {
        let n = hog.read(&mut buf).unwrap();
        assert!(n > 0, "closed after {received} of {expected} bytes");
        if head.len() < one.len() {
            head.extend_from_slice(&buf[..n.min(one.len() - head.len())]);
        }
        received += n as u64;
    }
    assert_eq!(received, expected, "every answer, nothing more");
    assert!(head == one.as_bytes(), "the first answer is the MGET's");
}

/// Flags of the flood test, and the memory they allow the node.
const FLOOD_CONNECTIONS: usize = 1024;
const FLOOD_VALUE: usize = 512 << 10;
const FLOOD_ANSWER_BYTES: u64 = 256 << 10;
const FLOOD_REQUEST_BYTES: u64 = 32 * MIB;
const FLOOD_UNCOMMITTED_BYTES: u64 = 32 * MIB;
const FLOOD_SNAPSHOT_BYTES: u64 = 32 * MIB;

/// What the flags imply a node may hold beyond its idle size: the request
/// budget, the leader's uncommitted entries, the log kept between
/// snapshots (one interval, plus one more while a follower receives a
/// snapshot), the state (16 keys of the largest value, once more while a
/// snapshot of it is written), and per connection its answers (queued and
/// being encoded: twice the answer limit), the read-ahead of its frame
/// reader, its own request allowance and its task and socket bookkeeping.
fn flood_bound_bytes() -> u64 {
    let per_connection = 2 * FLOOD_ANSWER_BYTES
        + kv_net::frame::READ_AHEAD as u64
        + kv_net::client::budget::CONNECTION_ALLOWANCE as u64
        + (16 << 10);
    let state = 16 * FLOOD_VALUE as u64;
    FLOOD_REQUEST_BYTES
        + FLOOD_UNCOMMITTED_BYTES
        + 2 * FLOOD_SNAPSHOT_BYTES
        + 2 * state
        + FLOOD_CONNECTIONS as u64 * per_connection
}

/// One flooding connection: a non-blocking socket and the frame it is
/// part-way through sending. It never reads.
struct Flooder {
    stream: Option<TcpStream>,
    pending: Vec<u8>,
    sent: usize,
    next_id: u64,
}

impl Flooder {
    fn connect(addr: SocketAddr) -> Option<TcpStream> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
        s.set_nonblocking(true).ok()?;
        // Four bytes always fit an empty socket buffer.
        s.write_all(&[0, b'K', b'V', b'B']).ok()?;
        Some(s)
    }

    /// Sends what the socket takes; reconnects after the node closed it.
    /// Returns the number of reconnections (0 or 1).
    fn pump(&mut self, addr: SocketAddr, which: usize, value: &[u8]) -> u64 {
        let mut reconnected = 0;
        if self.stream.is_none() {
            self.stream = Self::connect(addr);
            self.sent = 0;
            self.pending.clear();
            reconnected = 1;
        }
        let Some(stream) = self.stream.as_mut() else {
            return reconnected;
        };
        if self.sent == self.pending.len() {
            self.next_id += 1;
            // Half the connections write the largest values, half pipeline
            // GETs of one and never read the answers.
            let op = if which.is_multiple_of(2) {
                set(&format!("flood{}", which % 16), value)
            } else {
                get("big")
            };
            self.pending = frame(self.next_id, op);
            self.sent = 0;
        }
        match stream.write(&self.pending[self.sent..]) {
            Ok(n) => self.sent += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(_) => self.stream = None,
        }
        reconnected
    }
}

/// A well-behaved client asking one small thing every 50 ms on its own
/// connection; keeps the slowest answer and counts the answers.
fn polite_client(leader: SocketAddr, stop: Arc<AtomicBool>, slowest_us: Arc<AtomicU64>) -> u64 {
    let mut answered = 0;
    while !stop.load(Ordering::Relaxed) {
        let asked = Instant::now();
        let answer = try_request(leader, "GET small");
        let took = asked.elapsed().as_micros() as u64;
        slowest_us.fetch_max(took, Ordering::Relaxed);
        // Served: the value, or word that leadership moved (the flood can
        // cost the leader its term; the node still answers).
        if answer.as_deref().is_some_and(served) {
            answered += 1;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    answered
}

#[test]
fn a_flood_of_connections_big_values_and_unread_pipelines_stays_within_its_memory_bound() {
    let flags = [
        ("--max-connections", (FLOOD_CONNECTIONS + 64) as u64),
        ("--max-answer-bytes", FLOOD_ANSWER_BYTES),
        ("--max-request-bytes", FLOOD_REQUEST_BYTES),
        ("--max-uncommitted-bytes", FLOOD_UNCOMMITTED_BYTES),
        ("--snapshot-bytes", FLOOD_SNAPSHOT_BYTES),
        ("--max-value-bytes", FLOOD_VALUE as u64),
        ("--write-timeout-ms", 2000),
        ("--election-ticks", 50),
        ("--heartbeat-ticks", 5),
    ]
    .map(|(f, v)| [f.to_string(), v.to_string()]);
    let flags: Vec<&str> = flags.iter().flatten().map(String::as_str).collect();
    let mut c = Cluster::start("flood", 3, &flags);
    let value = vec![b'f'; FLOOD_VALUE - 64];
    store(&c, "big", &value);
    let leader_id = store(&c, "small", b"1");
    let leader = c.client(leader_id);
    let pid = c.pid(leader_id).unwrap();
    let idle_kib = proc_status_kib(pid, "VmRSS").unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let slowest_us = Arc::new(AtomicU64::new(0));
    let polite = {
        let (stop, slowest_us) = (stop.clone(), slowest_us.clone());
        std::thread::spawn(move || polite_client(leader, stop, slowest_us))
    };
    let threads = 4;
    let flooders: Vec<_> = (0..threads)
        .map(|t| {
            let (stop, value) = (stop.clone(), value.clone());
            std::thread::spawn(move || {
                let mine: Vec<usize> = (t..FLOOD_CONNECTIONS).step_by(threads).collect();
                let mut conns: Vec<Flooder> = mine
                    .iter()
                    .map(|_| Flooder {
                        stream: None,
                        pending: Vec::new(),
                        sent: 0,
                        next_id: 0,
                    })
                    .collect();
                let mut reconnects = 0;
                while !stop.load(Ordering::Relaxed) {
                    for (f, &which) in conns.iter_mut().zip(&mine) {
                        reconnects += f.pump(leader, which, &value);
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                reconnects - mine.len() as u64
            })
        })
        .collect();

    let flood_for = Duration::from_secs(15);
    let started = Instant::now();
    let mut peak_kib = idle_kib;
    while started.elapsed() < flood_for {
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            c.running(leader_id),
            "the flooded node died; logs in {}",
            c.dir.display()
        );
        peak_kib = peak_kib.max(proc_status_kib(pid, "VmRSS").unwrap_or(0));
    }
    stop.store(true, Ordering::Relaxed);
    let reconnects: u64 = flooders.into_iter().map(|t| t.join().unwrap()).sum();
    let answered = polite.join().unwrap();
    let hwm_kib = proc_status_kib(pid, "VmHWM")
        .unwrap_or(peak_kib)
        .max(peak_kib);
    let bound = idle_kib * 1024 + flood_bound_bytes();
    let slowest = Duration::from_micros(slowest_us.load(Ordering::Relaxed));
    println!(
        "flood: {FLOOD_CONNECTIONS} connections for {flood_for:?}: leader RSS idle {} MiB, \
         peak {} MiB, bound {} MiB; {reconnects} flood connections cut off and reopened; \
         polite client: {answered} answers, slowest {slowest:?}",
        idle_kib / 1024,
        hwm_kib / 1024,
        bound / MIB,
    );
    assert!(c.running(leader_id), "the flooded node died");
    assert!(
        hwm_kib * 1024 <= bound,
        "peak RSS {} MiB over the bound of {} MiB",
        hwm_kib / 1024,
        bound / MIB
    );
    // The polite client was never starved: answered again and again, each
    // time well within the request timeout. The flood saturates both cores
    // and each polite request opens a connection behind a thousand others,
    // so on a shared 2-core machine answers take 0.5-4 s (5-30 of them in
    // 15 s, measured before and after the Redis protocol landed); the
    // bounds leave room for that noise. The figure to watch is the slowest
    // answer printed above, under a second on an idle machine.
    assert!(
        answered >= 3,
        "the polite client got only {answered} answers"
    );
    assert!(
        slowest < Duration::from_secs(8),
        "a polite request took {slowest:?}"
    );
    // The cluster serves normally once the flood is over: one request to
    // whichever node leads now, not retried (an overloaded answer fails).
    let leader = c.client(c.leader(Duration::from_secs(10)));
    assert_eq!(try_request(leader, "GET small").as_deref(), Some("VALUE 1"));
}

/// Session ids are drawn at random by the proposing node: a client that
/// tries the ids the log's indexes would give cannot write in (and spoil
/// the exactly-once answers of) another client's session.
#[test]
fn a_client_cannot_write_in_a_session_it_did_not_open() {
    let c = Cluster::start("guess", 3, &[]);
    let owner: u64 = c
        .request("SESSION")
        .strip_prefix("SESSION ")
        .and_then(|id| id.parse().ok())
        .unwrap();
    // The log holds a few dozen entries at most: every index it has used,
    // and then some, tried as a session id. (A random id falls in this
    // range once in 2^56 runs.)
    for guess in 1..=200u64 {
        let answer = c.request(&format!("@{guess}/1/0 INCR hits"));
        assert_eq!(
            answer, "ERR session expired or unknown: open a new one",
            "id {guess}"
        );
    }
    assert_eq!(c.request(&format!("@{owner}/1/0 INCR hits")), "INT 1");
    assert_eq!(c.request("GET hits"), "VALUE 1", "no guessed write applied");
}
