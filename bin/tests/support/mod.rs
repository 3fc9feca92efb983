//! Shared helpers of the process-level tests: a cluster of real
//! `kv-server` processes on loopback with ephemeral ports and temporary
//! data directories, and one-line text-protocol requests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kv_net::client::retry::{text_verdict, Verdict};

/// A cluster of kv-server processes.
pub struct Cluster {
    pub dir: PathBuf,
    pub members: String,
    clients: Vec<SocketAddr>,
    peers: Vec<SocketAddr>,
    procs: Vec<Option<Child>>,
    extra: Vec<String>,
    /// Flags for one node only (`per_node[id - 1]`), after `extra`.
    per_node: Vec<Vec<String>>,
}

/// A free loopback port, never one this test process was given before: a
/// port the kernel just freed can come back from the next bind, and two
/// members given one address refuse to start (seen in CI).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if GIVEN.lock().unwrap_or_else(|e| e.into_inner()).insert(port) {
            return port;
        }
    }
}

impl Cluster {
    pub fn start(name: &str, n: usize, extra: &[&str]) -> Cluster {
        Self::start_each(name, n, extra, vec![Vec::new(); n])
    }

    /// As `start`, with `per_node[id - 1]` added to node `id`'s flags.
    pub fn start_each(name: &str, n: usize, extra: &[&str], per_node: Vec<Vec<String>>) -> Cluster {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut members = Vec::new();
        let mut clients = Vec::new();
        let mut peers = Vec::new();
        for id in 1..=n {
            let peer = free_port();
            let client = free_port();
            members.push(format!("{id}=127.0.0.1:{peer}/127.0.0.1:{client}"));
            clients.push(SocketAddr::from(([127, 0, 0, 1], client)));
            peers.push(SocketAddr::from(([127, 0, 0, 1], peer)));
        }
        let mut c = Cluster {
            dir,
            members: members.join(","),
            clients,
            peers,
            procs: (0..n).map(|_| None).collect(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            per_node,
        };
        for id in 1..=n {
            c.spawn(id);
        }
        c
    }

    pub fn spawn(&mut self, id: usize) {
        let log = std::fs::File::create(self.dir.join(format!("node{id}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_kv-server"))
            .arg("--id")
            .arg(id.to_string())
            .arg("--members")
            .arg(&self.members)
            .arg("--data-dir")
            .arg(self.dir.join(format!("node{id}")))
            .args(self.timing())
            .args(&self.extra)
            .args(self.per_node.get(id - 1).into_iter().flatten())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start kv-server");
        self.procs[id - 1] = Some(child);
    }

    /// Quick timing for tests (elections in 200-400 ms, heartbeats every
    /// 30 ms), unless the test chose its own. Not faster: on a loaded
    /// 2-core CI machine a node can stall for 100 ms, and a leader lost to
    /// that mid-test made a test fail that was not about failover.
    fn timing(&self) -> Vec<&'static str> {
        if self.extra.iter().any(|a| a == "--election-ticks") {
            return Vec::new();
        }
        vec![
            "--tick-ms",
            "10",
            "--election-ticks",
            "20",
            "--heartbeat-ticks",
            "3",
        ]
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self, id: usize) {
        if let Some(mut child) = self.procs[id - 1].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, as an operator's `kill` or a service manager would: the
    /// node may hand leadership over first. Waits for it to exit.
    pub fn terminate(&mut self, id: usize) {
        let Some(mut child) = self.procs[id - 1].take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("node {id} did not stop within 15 s of SIGTERM");
    }

    /// The process id of node `id`, if it runs.
    pub fn pid(&self, id: usize) -> Option<u32> {
        self.procs[id - 1].as_ref().map(Child::id)
    }

    /// Whether node `id` is still running (it has not exited or crashed).
    pub fn running(&mut self, id: usize) -> bool {
        match self.procs[id - 1].as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn peer_addr(&self, id: usize) -> SocketAddr {
        self.peers[id - 1]
    }

    pub fn client(&self, id: usize) -> SocketAddr {
        self.clients[id - 1]
    }

    /// Replaces node `id`'s own flags (for its next `spawn`).
    pub fn set_flags(&mut self, id: usize, flags: Vec<String>) {
        self.per_node[id - 1] = flags;
    }

    /// What node `id` logged so far.
    pub fn log(&self, id: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("node{id}.log"))).unwrap_or_default()
    }

    /// The id of the leader, as the nodes report it.
    pub fn leader(&self, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            for id in 1..=self.clients.len() {
                if self.procs[id - 1].is_none() {
                    continue;
                }
                match try_request(self.client(id), "GET lp") {
                    Some(r) if r.starts_with("VALUE") || r == "NOT_FOUND" => return id,
                    Some(r) if r.starts_with("REDIRECT ") => {
                        let addr: SocketAddr = r[9..].parse().unwrap();
                        if let Some(pos) = self.clients.iter().position(|a| *a == addr) {
                            if self.procs[pos].is_some() {
                                return pos + 1;
                            }
                        }
                    }
                    _ => {}
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "no leader within {within:?}; logs in {}",
            self.dir.display()
        );
    }

    /// Sends `line` to the leader, retrying while the product's own retry
    /// rules say to (a redirect, no leader, not applied, overloaded), and
    /// after an unknown outcome too when `line` is safe to send again (the
    /// leader may change under a test on a loaded machine; a DEL or CAS
    /// sent twice could answer differently, so theirs is returned as is).
    pub fn request(&self, line: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            let leader = self.leader(Duration::from_secs(10));
            match ask(self.client(leader), line) {
                Asked::Answered(r) => match verdict_on(&r) {
                    Verdict::Final => return r,
                    Verdict::Unknown(_) if !safe_to_repeat(line) => return r,
                    Verdict::Retry { .. } | Verdict::Unknown(_) => {}
                },
                Asked::NotSent => {}
                Asked::Unanswered if safe_to_repeat(line) => {}
                Asked::Unanswered => panic!(
                    "{line:?} sent, no answer: outcome unknown; logs in {}",
                    self.dir.display()
                ),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("no answer to {line:?}; logs in {}", self.dir.display());
    }
}

/// What the product's own retry rules say of text answer `r`.
fn verdict_on(r: &str) -> Verdict {
    match r.strip_prefix("ERR ") {
        Some(msg) => text_verdict(msg),
        None if r.starts_with("REDIRECT") => Verdict::Retry {
            why: "redirect",
            elsewhere: true,
        },
        None => Verdict::Final,
    }
}

/// Whether sending `line` twice leaves the store and the answer as sending
/// it once: plain writes of a value, reads, and writes in a session (the
/// store answers a repeat with the first answer while it keeps it, and
/// these tests' answers are small enough to be kept). Not SESSION: each
/// opens another session.
fn safe_to_repeat(line: &str) -> bool {
    let word = line.split(' ').next().unwrap_or_default();
    word.starts_with('@') || ["SET", "MSET", "GET", "PING"].contains(&word)
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for id in 1..=self.procs.len() {
            self.kill(id);
        }
    }
}

/// Everything a finished process wrote, stdout then stderr.
pub fn said(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`).
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// One request on a fresh connection; None if the node is unreachable or silent.
pub fn try_request(addr: SocketAddr, line: &str) -> Option<String> {
    match ask(addr, line) {
        Asked::Answered(answer) => Some(answer),
        Asked::NotSent | Asked::Unanswered => None,
    }
}

/// How one request on a fresh connection went.
pub enum Asked {
    /// No connection, or the line could not be written: nothing happened.
    NotSent,
    /// Sent, but no answer came (the node may or may not have acted on it).
    Unanswered,
    /// The answer line.
    Answered(String),
}

/// Sends `line` on a fresh connection and reads one answer line.
pub fn ask(addr: SocketAddr, line: &str) -> Asked {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return Asked::NotSent;
    };
    if s.set_read_timeout(Some(Duration::from_secs(6))).is_err()
        || s.write_all(format!("{line}\n").as_bytes()).is_err()
    {
        return Asked::NotSent;
    }
    let mut r = BufReader::new(s);
    let mut resp = String::new();
    match r.read_line(&mut resp) {
        Ok(n) if n > 0 => Asked::Answered(resp.trim_end().to_string()),
        _ => Asked::Unanswered,
    }
}

/// A connection kept open for several requests.
pub fn connect(addr: SocketAddr) -> (BufReader<TcpStream>, TcpStream) {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    (BufReader::new(s.try_clone().unwrap()), s)
}

pub fn roundtrip(conn: &mut (BufReader<TcpStream>, TcpStream), bytes: &[u8]) -> String {
    conn.1.write_all(bytes).unwrap();
    let mut resp = String::new();
    conn.0.read_line(&mut resp).unwrap();
    resp.trim_end().to_string()
}

/// Binary protocol helpers: the preamble, then frames.
pub mod binary {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::time::Duration;

    use kv_proto::client as pb;
    use kv_proto::prost::Message as _;

    pub fn connect(addr: SocketAddr) -> TcpStream {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&[0, b'K', b'V', b'B']).unwrap();
        s
    }

    pub fn send_raw(s: &mut TcpStream, payload: &[u8]) {
        s.write_all(&(payload.len() as u32).to_be_bytes()).unwrap();
        s.write_all(payload).unwrap();
    }

    pub fn send(s: &mut TcpStream, req: &pb::Request) {
        send_raw(s, &req.encode_to_vec());
    }

    /// The next response, or None if the server closed the connection.
    pub fn recv(s: &mut TcpStream) -> Option<pb::Response> {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).ok()?;
        let mut payload = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut payload).ok()?;
        Some(pb::Response::decode(payload.as_slice()).unwrap())
    }
}
