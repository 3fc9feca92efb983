//! One phase of a benchmark (a load, or the measured run): connections that
//! keep requests in flight and follow the leader, and the merged results.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use bytes::Bytes;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use kv_net::client::retry::Endpoints;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::wire::{connect, Answer, BenchOp, Reader, Tag, Writer};
use crate::{key, Args, ANSWER_TIMEOUT};

/// What a phase does.
#[derive(Debug, Clone, Copy)]
pub enum Phase {
    /// Write keys 0..N in batches.
    Load(u64),
    /// The measured workload.
    Measure,
}

/// What a phase measured.
pub struct PhaseResult {
    /// Requests served.
    pub ok: u64,
    /// Requests failed (they may or may not have happened), by kind.
    pub failed: BTreeMap<&'static str, u64>,
    /// Requests sent again because they surely did not happen, by kind.
    pub retried: BTreeMap<&'static str, u64>,
    /// Times a connection moved to another node after a redirect.
    pub leader_moves: u64,
    /// Wall time of the phase.
    pub seconds: f64,
    /// Latency of answered requests, µs (retries included in their latency).
    pub hist: Histogram<u64>,
    /// (unix ms, latency µs, ok) of each answered request, if logged.
    pub latencies: Vec<(u64, u64, bool)>,
}

impl PhaseResult {
    /// Requests failed, of any kind.
    pub fn failed_total(&self) -> u64 {
        self.failed.values().sum()
    }

    fn empty() -> Result<Self> {
        Ok(PhaseResult {
            ok: 0,
            failed: BTreeMap::new(),
            retried: BTreeMap::new(),
            leader_moves: 0,
            seconds: 0.0,
            hist: Histogram::new_with_bounds(1, 120_000_000, 3)?,
            latencies: Vec::new(),
        })
    }

    fn merge(&mut self, other: PhaseResult) -> Result<()> {
        self.ok += other.ok;
        for (k, n) in other.failed {
            *self.failed.entry(k).or_default() += n;
        }
        for (k, n) in other.retried {
            *self.retried.entry(k).or_default() += n;
        }
        self.leader_moves += other.leader_moves;
        self.hist.add(&other.hist)?;
        self.latencies.extend(other.latencies);
        Ok(())
    }
}

/// What the connections of a phase share.
struct Shared {
    /// The nodes, and the one new connections go to (the leader, as far
    /// as the connections found out).
    endpoints: Mutex<Endpoints>,
    stop: AtomicBool,
    /// Requests handed out (against `--count`).
    issued: AtomicU64,
    /// Next key to load.
    next_key: AtomicU64,
    /// Progress, for the bar.
    answered: AtomicU64,
    failed: AtomicU64,
    /// TLS towards the nodes (off: plain TCP).
    tls: Option<tokio_rustls::TlsConnector>,
}

impl Shared {
    fn endpoints(&self) -> std::sync::MutexGuard<'_, Endpoints> {
        self.endpoints.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn leader(&self) -> SocketAddr {
        self.endpoints().current()
    }

    /// Follows a redirect to `to`.
    fn set_leader(&self, to: &str) {
        self.endpoints().redirect(to);
    }

    /// `addr` did not answer: try the next address.
    fn rotate_from(&self, addr: SocketAddr) {
        self.endpoints().rotate_from(addr);
    }
}

/// Where a connection's requests come from.
enum Source {
    Random {
        rng: Box<ChaCha8Rng>,
        value: Bytes,
        limit: u64,
    },
    Load {
        total: u64,
        batch: u64,
        value: Bytes,
    },
}

impl Source {
    fn next(&mut self, args: &Args, shared: &Shared) -> Option<BenchOp> {
        match self {
            Source::Random { rng, value, limit } => {
                if shared.issued.fetch_add(1, Ordering::Relaxed) >= *limit {
                    return None;
                }
                let k = Bytes::from(key(rng.random_range(0..args.keys), args.key_size));
                Some(if rng.random_bool(args.reads.clamp(0.0, 1.0)) {
                    BenchOp::Get(k)
                } else {
                    BenchOp::Set(k, value.clone())
                })
            }
            Source::Load {
                total,
                batch,
                value,
            } => {
                let start = shared.next_key.fetch_add(*batch, Ordering::Relaxed);
                if start >= *total {
                    return None;
                }
                let pairs = (start..(start + *batch).min(*total))
                    .map(|i| (Bytes::from(key(i, args.key_size)), value.clone()))
                    .collect();
                Some(BenchOp::MSet(pairs))
            }
        }
    }
}

/// Runs a phase to its end (count, duration or keys) and merges what every
/// connection measured; a connection that fails outright loses nothing
/// already measured.
pub async fn run_phase(args: &Args, phase: Phase) -> Result<PhaseResult> {
    let addrs = kv_bin::client::resolve_addrs(&args.addr)?;
    let endpoints = Endpoints::new(addrs, 0).context("no node address given")?;
    let shared = Arc::new(Shared {
        endpoints: Mutex::new(endpoints),
        stop: AtomicBool::new(false),
        issued: AtomicU64::new(0),
        next_key: AtomicU64::new(0),
        answered: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        tls: args.tls()?,
    });
    let value = Bytes::from(vec![b'v'; args.value_size]);
    let mut tasks = Vec::new();
    for id in 0..args.connections {
        let source = match phase {
            Phase::Load(total) => Source::Load {
                total,
                batch: args.load_batch as u64,
                value: value.clone(),
            },
            Phase::Measure => Source::Random {
                rng: Box::new(ChaCha8Rng::seed_from_u64(
                    args.seed.wrapping_mul(1_000_003) ^ id as u64,
                )),
                value: value.clone(),
                limit: args.count.unwrap_or(u64::MAX),
            },
        };
        tasks.push(tokio::spawn(connection(
            args.clone(),
            shared.clone(),
            source,
        )));
    }
    let started = Instant::now();
    watch(args, phase, &shared, &tasks, started).await?;
    let mut result = PhaseResult::empty()?;
    for task in tasks {
        match task.await {
            Ok(Ok(part)) => result.merge(part)?,
            Ok(Err(e)) => eprintln!("kv-bench: a connection failed: {e:#}"),
            Err(e) => eprintln!("kv-bench: a connection task failed: {e}"),
        }
    }
    result.seconds = started.elapsed().as_secs_f64();
    Ok(result)
}

/// Shows progress and stops the phase when its time is up.
async fn watch(
    args: &Args,
    phase: Phase,
    shared: &Shared,
    tasks: &[tokio::task::JoinHandle<Result<PhaseResult>>],
    started: Instant,
) -> Result<()> {
    let bar = if args.quiet || args.json {
        ProgressBar::hidden()
    } else {
        let (len, template) = match phase {
            Phase::Load(n) => (n, "loading {bar:40} {pos}/{len} keys {msg}"),
            Phase::Measure => (
                (args.duration * 10.0) as u64,
                "{bar:40} {elapsed}/{duration} {msg}",
            ),
        };
        let bar = ProgressBar::new(len);
        bar.set_style(ProgressStyle::with_template(template)?);
        bar
    };
    let deadline = started + Duration::from_secs_f64(args.duration.max(0.0));
    while !tasks.iter().all(|t| t.is_finished()) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let secs = started.elapsed().as_secs_f64();
        let answered = shared.answered.load(Ordering::Relaxed);
        match phase {
            Phase::Load(n) => {
                let batch = args.load_batch as u64;
                bar.set_position((answered * batch).min(n));
                bar.set_message(format!("{:.0} keys/s", (answered * batch) as f64 / secs));
            }
            Phase::Measure => {
                bar.set_position((secs * 10.0) as u64);
                bar.set_message(format!(
                    "{:.0} req/s, {} failed",
                    answered as f64 / secs,
                    shared.failed.load(Ordering::Relaxed)
                ));
                if args.count.is_none() && Instant::now() >= deadline {
                    shared.stop.store(true, Ordering::Relaxed);
                }
            }
        }
    }
    bar.finish_and_clear();
    Ok(())
}

/// How long after the end a connection goes on sending again the writes
/// whose answer was lost.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A request on its way: what it is, when it was first sent, and its
/// number in the connection's session (0: none).
type Pending = (BenchOp, Instant, u64);

/// A connection's exactly-once session: its id once opened, the next
/// write's number, and the numbers of the writes not answered yet (the
/// server may forget the answers below the lowest of them).
struct WriteSession {
    enabled: bool,
    id: Option<u64>,
    next_seq: u64,
    unanswered: BTreeSet<u64>,
}

impl WriteSession {
    fn new(enabled: bool) -> Self {
        WriteSession {
            enabled,
            id: None,
            next_seq: 1,
            unanswered: BTreeSet::new(),
        }
    }

    /// Whether a session must be opened before writes are sent.
    fn needs_opening(&self) -> bool {
        self.enabled && self.id.is_none()
    }

    /// The number of a request drawn now (0 for a read or without sessions).
    fn number(&mut self, op: &BenchOp) -> u64 {
        if !(self.enabled && op.is_write()) {
            return 0;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.unanswered.insert(seq);
        seq
    }

    /// The tag of the request numbered `seq`.
    fn tag(&self, seq: u64) -> Option<Tag> {
        let id = self.id.filter(|_| seq > 0)?;
        let acked_below = self.unanswered.first().copied().unwrap_or(self.next_seq);
        Some((id, seq, acked_below))
    }

    fn answered(&mut self, seq: u64) {
        self.unanswered.remove(&seq);
    }
}

/// How opening a session went.
enum Opened {
    Session(u64),
    Redirect(String),
    Failed,
}

/// Opens a session on a fresh connection (nothing else in flight).
async fn open_session(writer: &mut Writer, reader: &mut Reader, id: u64) -> Opened {
    writer.push(id, &BenchOp::OpenSession, None, reader);
    if writer.flush().await.is_err() {
        return Opened::Failed;
    }
    match tokio::time::timeout(ANSWER_TIMEOUT, reader.next()).await {
        Ok(Ok(Some((answered, Answer::Session(session))))) if answered == id => {
            Opened::Session(session)
        }
        Ok(Ok(Some((_, Answer::Redirect(to))))) => Opened::Redirect(to),
        _ => Opened::Failed,
    }
}

/// One connection's life: requests kept in flight until the phase ends,
/// following the leader from node to node.
async fn connection(args: Args, shared: Arc<Shared>, mut source: Source) -> Result<PhaseResult> {
    let mut r = Requests::new(&args, &shared)?;
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            r.time_up();
            break;
        }
        if r.exhausted && r.again.is_empty() {
            break;
        }
        let addr = shared.leader();
        let Ok((mut writer, mut reader)) = connect(addr, args.protocol, shared.tls.as_ref()).await
        else {
            shared.rotate_from(addr);
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if r.open_session(addr, &mut writer, &mut reader).await {
            r.serve(addr, &mut writer, &mut reader, &mut source).await;
        }
    }
    Ok(r.out)
}

/// A connection's requests: measured, in flight, and waiting to be sent
/// again (on this node or the next).
struct Requests<'a> {
    args: &'a Args,
    shared: &'a Shared,
    out: PhaseResult,
    again: VecDeque<Pending>,
    in_flight: HashMap<u64, Pending>,
    session: WriteSession,
    /// When this connection first saw the time was up.
    stop_seen: Option<Instant>,
    /// The source has no more requests.
    exhausted: bool,
    next_id: u64,
}

impl<'a> Requests<'a> {
    fn new(args: &'a Args, shared: &'a Shared) -> Result<Self> {
        Ok(Requests {
            args,
            shared,
            out: PhaseResult::empty()?,
            again: VecDeque::new(),
            in_flight: HashMap::new(),
            session: WriteSession::new(!args.no_sessions),
            stop_seen: None,
            exhausted: false,
            next_id: 1,
        })
    }

    /// Time is up: what waits to be sent again surely did not happen, but
    /// for writes whose answer was lost.
    fn time_up(&mut self) {
        for (_, started, seq) in std::mem::take(&mut self.again) {
            if seq > 0 {
                let kind = "outcome unknown (time up before it was sent again)";
                record(&mut self.out, self.args, self.shared, started, Some(kind));
            }
        }
    }

    /// Opens the session on a fresh connection if there is none yet: false
    /// if that failed and the connection is to be left.
    async fn open_session(&mut self, addr: SocketAddr, w: &mut Writer, r: &mut Reader) -> bool {
        if !self.session.needs_opening() {
            return true;
        }
        self.next_id += 1;
        match open_session(w, r, self.next_id - 1).await {
            Opened::Session(id) => {
                self.session.id = Some(id);
                return true;
            }
            Opened::Redirect(to) => self.shared.set_leader(&to),
            Opened::Failed => {
                self.shared.rotate_from(addr);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        false
    }

    /// Keeps requests in flight on one connection until it is to be left:
    /// lost, the node stopping, the leader moved, or nothing left to send.
    async fn serve(
        &mut self,
        addr: SocketAddr,
        w: &mut Writer,
        r: &mut Reader,
        source: &mut Source,
    ) {
        let mut moving = false;
        loop {
            if !moving {
                self.fill(w, r, source);
            }
            if self.in_flight.is_empty() {
                return;
            }
            let answer = match w.flush().await {
                Ok(()) => tokio::time::timeout(ANSWER_TIMEOUT, r.next()).await,
                Err(_) => Ok(Ok(None)),
            };
            let (id, answer) = match answer {
                Ok(Ok(Some(a))) => a,
                _ => return self.lost(addr),
            };
            if matches!(answer, Answer::GoAway) {
                // Nothing still in flight here was read: send it elsewhere.
                return self.resend_all(addr, "node stopping");
            }
            let Some(pending) = self.in_flight.remove(&id) else {
                continue;
            };
            if let Answer::Retry {
                elsewhere: true, ..
            } = answer
            {
                // This node cannot serve (or knows no leader): another may.
                self.shared.rotate_from(addr);
            }
            moving |= self.settle(pending, answer).await;
            if moving && self.in_flight.is_empty() {
                return;
            }
        }
    }

    /// Puts requests in flight up to `--inflight`: those to send again
    /// first, then new ones. Once time is up, writes whose answer was lost
    /// are still sent again for a while, to settle them; then they count as
    /// unknown.
    fn fill(&mut self, w: &mut Writer, r: &mut Reader, source: &mut Source) {
        let stopping = self.shared.stop.load(Ordering::Relaxed);
        let settling =
            stopping && self.stop_seen.get_or_insert_with(Instant::now).elapsed() < STOP_GRACE;
        while self.in_flight.len() < self.args.inflight {
            let next = match self.again.pop_front() {
                Some(p) if !stopping || (p.2 > 0 && settling) => p,
                Some(p) => {
                    self.again.push_front(p);
                    break;
                }
                None if stopping || self.exhausted => break,
                None => match source.next(self.args, self.shared) {
                    Some(op) => {
                        let seq = self.session.number(&op);
                        (op, Instant::now(), seq)
                    }
                    None => {
                        self.exhausted = true;
                        break;
                    }
                },
            };
            w.push(self.next_id, &next.0, self.session.tag(next.2), r);
            self.in_flight.insert(self.next_id, next);
            self.next_id += 1;
        }
    }

    /// The connection was lost or went silent: every request in flight may
    /// or may not have happened; a write in a session is sent again.
    fn lost(&mut self, addr: SocketAddr) {
        for (_, pending) in std::mem::take(&mut self.in_flight) {
            if pending.2 > 0 {
                let why = "answer lost (sent again in its session)";
                *self.out.retried.entry(why).or_default() += 1;
                self.again.push_back(pending);
            } else {
                let kind = "connection lost (outcome unknown)";
                record(&mut self.out, self.args, self.shared, pending.1, Some(kind));
            }
        }
        self.shared.rotate_from(addr);
    }

    /// Every request in flight surely did not happen: all are sent again,
    /// to the next node.
    fn resend_all(&mut self, addr: SocketAddr, why: &'static str) {
        for (_, pending) in std::mem::take(&mut self.in_flight) {
            *self.out.retried.entry(why).or_default() += 1;
            self.again.push_back(pending);
        }
        self.shared.rotate_from(addr);
    }

    /// What an answer means for its request: recorded, or queued to be
    /// sent again. True if the leader moved (the connection should follow).
    async fn settle(&mut self, pending: Pending, answer: Answer) -> bool {
        let (_, started, seq) = pending;
        let (out, shared) = (&mut self.out, self.shared);
        match answer {
            Answer::Done | Answer::Session(_) => {
                self.session.answered(seq);
                record(out, self.args, shared, started, None);
            }
            // An unknown outcome in a session: the same write, same number,
            // is answered its first result if it happened, applied if not.
            Answer::Unknown(kind) if seq > 0 => {
                *out.retried.entry(kind).or_default() += 1;
                self.again.push_back(pending);
            }
            Answer::Unknown(kind) | Answer::Failed(kind) => {
                self.session.answered(seq);
                record(out, self.args, shared, started, Some(kind));
            }
            Answer::Redirect(to) => {
                *out.retried.entry("redirect").or_default() += 1;
                if to.parse::<SocketAddr>().ok() != Some(shared.leader()) {
                    out.leader_moves += 1;
                }
                shared.set_leader(&to);
                self.again.push_back(pending);
                return true;
            }
            Answer::Retry { why, elsewhere } => {
                *out.retried.entry(why).or_default() += 1;
                self.again.push_back(pending);
                tokio::time::sleep(Duration::from_millis(20)).await;
                // The caller has moved the leader on: follow.
                return elsewhere;
            }
            Answer::GoAway => {}
        }
        false
    }
}

fn record(
    out: &mut PhaseResult,
    args: &Args,
    shared: &Shared,
    started: Instant,
    failed: Option<&'static str>,
) {
    let us = started.elapsed().as_micros() as u64;
    let _ = out.hist.record(us.max(1));
    match failed {
        None => {
            out.ok += 1;
            shared.answered.fetch_add(1, Ordering::Relaxed);
        }
        Some(kind) => {
            *out.failed.entry(kind).or_default() += 1;
            shared.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
    if args.latency_log.is_some() {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        out.latencies.push((ms, us, failed.is_none()));
    }
}
