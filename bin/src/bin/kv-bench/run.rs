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

/// One connection's life: requests kept in flight until the phase ends.
async fn connection(args: Args, shared: Arc<Shared>, mut source: Source) -> Result<PhaseResult> {
    let mut out = PhaseResult::empty()?;
    let mut again: VecDeque<Pending> = VecDeque::new();
    let mut in_flight: HashMap<u64, Pending> = HashMap::new();
    let mut session = WriteSession::new(!args.no_sessions);
    let mut stop_seen: Option<Instant> = None;
    let mut exhausted = false;
    let mut next_id = 1u64;
    'connect: loop {
        if shared.stop.load(Ordering::Relaxed) {
            // Time is up: what waits to be sent again surely did not
            // happen, but for writes whose answer was lost.
            for (_, started, seq) in again.drain(..) {
                if seq > 0 {
                    let kind = "outcome unknown (time up before it was sent again)";
                    record(&mut out, &args, &shared, started, Some(kind));
                }
            }
            break;
        }
        if exhausted && again.is_empty() {
            break;
        }
        let addr = shared.leader();
        let Ok((mut writer, mut reader)) = connect(addr, args.protocol, shared.tls.as_ref()).await
        else {
            shared.rotate_from(addr);
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if session.needs_opening() {
            next_id += 1;
            match open_session(&mut writer, &mut reader, next_id - 1).await {
                Opened::Session(id) => session.id = Some(id),
                Opened::Redirect(to) => {
                    shared.set_leader(&to);
                    continue 'connect;
                }
                Opened::Failed => {
                    shared.rotate_from(addr);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue 'connect;
                }
            }
        }
        let mut moving = false;
        loop {
            let stopping = shared.stop.load(Ordering::Relaxed);
            // Once time is up, writes whose answer was lost are still sent
            // again for a while, to settle them; then they count as unknown.
            let settling =
                stopping && stop_seen.get_or_insert_with(Instant::now).elapsed() < STOP_GRACE;
            while !moving && in_flight.len() < args.inflight {
                let next = match again.pop_front() {
                    Some(p) if !stopping || (p.2 > 0 && settling) => p,
                    Some(p) => {
                        again.push_front(p);
                        break;
                    }
                    None if stopping || exhausted => break,
                    None => match source.next(&args, &shared) {
                        Some(op) => {
                            let seq = session.number(&op);
                            (op, Instant::now(), seq)
                        }
                        None => {
                            exhausted = true;
                            break;
                        }
                    },
                };
                writer.push(next_id, &next.0, session.tag(next.2), &mut reader);
                in_flight.insert(next_id, next);
                next_id += 1;
            }
            if in_flight.is_empty() {
                continue 'connect;
            }
            let answer = match writer.flush().await {
                Ok(()) => tokio::time::timeout(ANSWER_TIMEOUT, reader.next()).await,
                Err(_) => Ok(Ok(None)),
            };
            let (id, answer) = match answer {
                Ok(Ok(Some(a))) => a,
                // Lost or silent: every request in flight may or may not
                // have happened; a write in a session is sent again.
                _ => {
                    for (_, pending) in in_flight.drain() {
                        if pending.2 > 0 {
                            *out.retried
                                .entry("answer lost (sent again in its session)")
                                .or_default() += 1;
                            again.push_back(pending);
                        } else {
                            let kind = "connection lost (outcome unknown)";
                            record(&mut out, &args, &shared, pending.1, Some(kind));
                        }
                    }
                    shared.rotate_from(addr);
                    continue 'connect;
                }
            };
            if matches!(answer, Answer::GoAway) {
                // Nothing still in flight here was read: send it elsewhere.
                for (_, pending) in in_flight.drain() {
                    *out.retried.entry("node stopping").or_default() += 1;
                    again.push_back(pending);
                }
                shared.rotate_from(addr);
                continue 'connect;
            }
            let Some(pending) = in_flight.remove(&id) else {
                continue;
            };
            if let Answer::Retry {
                elsewhere: true, ..
            } = answer
            {
                // This node cannot serve (or knows no leader): another may.
                shared.rotate_from(addr);
            }
            moving |= settle(
                &mut out,
                &args,
                &shared,
                &mut session,
                &mut again,
                pending,
                answer,
            )
            .await;
            if moving && in_flight.is_empty() {
                continue 'connect;
            }
        }
    }
    Ok(out)
}

/// What an answer means for its request: recorded, or queued to be sent
/// again. True if the leader moved (the connection should follow).
async fn settle(
    out: &mut PhaseResult,
    args: &Args,
    shared: &Shared,
    session: &mut WriteSession,
    again: &mut VecDeque<Pending>,
    pending: Pending,
    answer: Answer,
) -> bool {
    let (_, started, seq) = pending;
    match answer {
        Answer::Done | Answer::Session(_) => {
            session.answered(seq);
            record(out, args, shared, started, None);
        }
        // An unknown outcome in a session: the same write, same number,
        // is answered its first result if it happened, applied if not.
        Answer::Unknown(kind) if seq > 0 => {
            *out.retried.entry(kind).or_default() += 1;
            again.push_back(pending);
        }
        Answer::Unknown(kind) | Answer::Failed(kind) => {
            session.answered(seq);
            record(out, args, shared, started, Some(kind));
        }
        Answer::Redirect(to) => {
            *out.retried.entry("redirect").or_default() += 1;
            if to.parse::<SocketAddr>().ok() != Some(shared.leader()) {
                out.leader_moves += 1;
            }
            shared.set_leader(&to);
            again.push_back(pending);
            return true;
        }
        Answer::Retry { why, elsewhere } => {
            *out.retried.entry(why).or_default() += 1;
            again.push_back(pending);
            tokio::time::sleep(Duration::from_millis(20)).await;
            // The caller has moved the leader on: follow.
            return elsewhere;
        }
        Answer::GoAway => {}
    }
    false
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
