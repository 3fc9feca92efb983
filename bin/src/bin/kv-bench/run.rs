//! One phase of a benchmark (a load, or the measured run): connections that
//! keep requests in flight and follow the leader, and the merged results.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use bytes::Bytes;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::wire::{connect, Answer, BenchOp};
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
    addrs: Vec<SocketAddr>,
    leader: Mutex<SocketAddr>,
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
    fn leader(&self) -> SocketAddr {
        *self.leader.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_leader(&self, addr: SocketAddr) {
        *self.leader.lock().unwrap_or_else(|e| e.into_inner()) = addr;
    }

    /// `addr` did not answer: try the next address.
    fn rotate_from(&self, addr: SocketAddr) {
        let mut leader = self.leader.lock().unwrap_or_else(|e| e.into_inner());
        if *leader == addr {
            let at = self.addrs.iter().position(|a| *a == addr).unwrap_or(0);
            *leader = self.addrs[(at + 1) % self.addrs.len()];
        }
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
    let shared = Arc::new(Shared {
        leader: Mutex::new(addrs[0]),
        addrs,
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

/// A request on its way: what it is and when it was first sent.
type Pending = (BenchOp, Instant);

/// One connection's life: requests kept in flight until the phase ends.
async fn connection(args: Args, shared: Arc<Shared>, mut source: Source) -> Result<PhaseResult> {
    let mut out = PhaseResult::empty()?;
    let mut again: VecDeque<Pending> = VecDeque::new();
    let mut in_flight: HashMap<u64, Pending> = HashMap::new();
    let mut exhausted = false;
    let mut next_id = 1u64;
    'connect: loop {
        if shared.stop.load(Ordering::Relaxed) {
            // Time is up: what waits to be sent again surely did not happen.
            again.clear();
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
        let mut moving = false;
        loop {
            let stopping = shared.stop.load(Ordering::Relaxed);
            while !moving && in_flight.len() < args.inflight {
                let next = match again.pop_front() {
                    Some(p) if !stopping => p,
                    Some(_) => break,
                    None if stopping || exhausted => break,
                    None => match source.next(&args, &shared) {
                        Some(op) => (op, Instant::now()),
                        None => {
                            exhausted = true;
                            break;
                        }
                    },
                };
                writer.push(next_id, &next.0, &mut reader);
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
                // Lost or silent: every request in flight may or may not have happened.
                _ => {
                    let kind = "connection lost (outcome unknown)";
                    for (_, (_, started)) in in_flight.drain() {
                        record(&mut out, &args, &shared, started, Some(kind));
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
            let Some((op, started)) = in_flight.remove(&id) else {
                continue;
            };
            match answer {
                Answer::Done => record(&mut out, &args, &shared, started, None),
                Answer::Failed(kind) => record(&mut out, &args, &shared, started, Some(kind)),
                Answer::Redirect(to) => {
                    *out.retried.entry("redirect").or_default() += 1;
                    if let Ok(to) = to.parse::<SocketAddr>() {
                        if to != shared.leader() {
                            out.leader_moves += 1;
                        }
                        shared.set_leader(to);
                    }
                    again.push_back((op, started));
                    moving = true;
                }
                Answer::Retry(kind) => {
                    *out.retried.entry(kind).or_default() += 1;
                    again.push_back((op, started));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Answer::GoAway => {}
            }
            if moving && in_flight.is_empty() {
                continue 'connect;
            }
        }
    }
    Ok(out)
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
