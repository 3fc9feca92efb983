//! `kv-bench`: load generator for the store. Opens connections to the
//! leader, keeps requests in flight, and reports throughput and latency
//! percentiles (HDR histogram), with a progress bar and an optional JSON line.

// A binary talks to its user on the terminal.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use kv_bin::client::Client;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Load generator for kv-server.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Server addresses (host:port), comma-separated; the leader is found from any of them.
    #[arg(
        long,
        env = "KV_ADDR",
        value_delimiter = ',',
        default_value = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"
    )]
    addr: Vec<String>,
    /// Client connections.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Requests in flight per connection (pipelined; answers come in order).
    #[arg(long, default_value_t = 1)]
    inflight: usize,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Key size in bytes.
    #[arg(long, default_value_t = 16)]
    key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Fraction of requests that are GETs (0.0 = all SET, 1.0 = all GET).
    #[arg(long, default_value_t = 0.0)]
    reads: f64,
    /// Run for this many seconds...
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// ...or stop after this many requests.
    #[arg(long)]
    count: Option<u64>,
    /// Client protocol.
    #[arg(long, value_enum, default_value_t = Protocol::Text)]
    protocol: Protocol,
    /// Before measuring, write every key once (for read workloads).
    #[arg(long)]
    preload: bool,
    /// Print one JSON object with the results (for scripts) instead of the table.
    #[arg(long)]
    json: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Protocol {
    /// The line protocol.
    Text,
    /// The framed binary protocol (requests pipelined with ids).
    Binary,
}

/// Shared counters and the latency histogram.
struct Stats {
    done: AtomicU64,
    errors: AtomicU64,
    stop: AtomicBool,
    latency_us: Mutex<Histogram<u64>>,
}

impl Stats {
    /// Counts one answer sent at `started`; stops everyone at `limit`.
    fn answered(&self, local: &mut Histogram<u64>, started: Instant, failed: bool, limit: u64) {
        let _ = local.record(started.elapsed().as_micros() as u64);
        if failed {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        if self.done.fetch_add(1, Ordering::Relaxed) + 1 >= limit {
            self.stop.store(true, Ordering::Relaxed);
        }
    }

    /// Adds one connection's latencies to the shared histogram.
    fn merge(&self, local: &Histogram<u64>) -> Result<()> {
        self.latency_us
            .lock()
            .map_err(|_| anyhow::anyhow!("histogram lock poisoned"))?
            .add(local)?;
        Ok(())
    }
}

fn key(i: u64, size: usize) -> String {
    let k = format!("k{i:0>width$}", width = size.saturating_sub(1));
    k[..size.max(1).min(k.len())].to_string()
}

async fn connection(addr: SocketAddr, id: usize, args: Arc<Args>, stats: Arc<Stats>) -> Result<()> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    let mut rng = ChaCha8Rng::seed_from_u64(id as u64);
    let value = "v".repeat(args.value_size);
    let mut sent_at = std::collections::VecDeque::with_capacity(args.inflight);
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut line = String::new();
    let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let limit = args.count.unwrap_or(u64::MAX);
    loop {
        // Fill the pipeline.
        buf.clear();
        while sent_at.len() < args.inflight && !stats.stop.load(Ordering::Relaxed) {
            let k = key(rng.random_range(0..args.keys), args.key_size);
            if rng.random_bool(args.reads.clamp(0.0, 1.0)) {
                buf.extend_from_slice(format!("GET {k}\n").as_bytes());
            } else {
                buf.extend_from_slice(format!("SET {k} {value}\n").as_bytes());
            }
            sent_at.push_back(Instant::now());
        }
        if !buf.is_empty() {
            write.write_all(&buf).await?;
        }
        let Some(started) = sent_at.pop_front() else {
            break;
        };
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            bail!("{addr} closed the connection");
        }
        let failed = line.starts_with("ERR") || line.starts_with("REDIRECT");
        stats.answered(&mut local, started, failed, limit);
    }
    stats.merge(&local)
}

/// One binary connection: up to `inflight` requests outstanding, answered
/// in any order and matched by id.
async fn binary_connection(
    addr: SocketAddr,
    id: usize,
    args: Arc<Args>,
    stats: Arc<Stats>,
) -> Result<()> {
    use kv_net::client::binary::MAGIC;
    use kv_net::frame::{encode_frame, FrameReader};
    use kv_proto::client::{self as pb, request::Op};
    use kv_proto::prost::Message as _;
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    write.write_all(&MAGIC).await?;
    let mut frames = FrameReader::new(read, 64 << 20);
    let mut rng = ChaCha8Rng::seed_from_u64(id as u64);
    let value = bytes::Bytes::from(vec![b'v'; args.value_size]);
    let mut sent_at = std::collections::HashMap::with_capacity(args.inflight);
    let mut next_id = 1u64;
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let limit = args.count.unwrap_or(u64::MAX);
    loop {
        buf.clear();
        while sent_at.len() < args.inflight && !stats.stop.load(Ordering::Relaxed) {
            let key = bytes::Bytes::from(key(rng.random_range(0..args.keys), args.key_size));
            let op = if rng.random_bool(args.reads.clamp(0.0, 1.0)) {
                Op::Get(pb::Get { key })
            } else {
                Op::Set(pb::Set {
                    key,
                    value: value.clone(),
                })
            };
            encode_frame(
                &pb::Request {
                    id: next_id,
                    op: Some(op),
                },
                &mut buf,
            );
            sent_at.insert(next_id, Instant::now());
            next_id += 1;
        }
        if !buf.is_empty() {
            write.write_all(&buf).await?;
        }
        if sent_at.is_empty() {
            break;
        }
        let Some(payload) = frames.next_frame().await? else {
            bail!("{addr} closed the connection")
        };
        let resp = pb::Response::decode(payload)?;
        let Some(started) = sent_at.remove(&resp.id) else {
            continue;
        };
        let failed = matches!(
            resp.result,
            Some(pb::response::Result::Error(_)) | Some(pb::response::Result::Redirect(_))
        );
        stats.answered(&mut local, started, failed, limit);
    }
    stats.merge(&local)
}

fn find_leader(addrs: &[String]) -> Result<SocketAddr> {
    let mut client = Client::new(addrs, Duration::from_secs(10))?;
    // A GET is answered only by the leader; the client follows REDIRECT there.
    client
        .request("GET __bench_probe")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(client.current_addr())
}

fn preload(leader: SocketAddr, args: &Args) -> Result<()> {
    let mut client = Client::new(&[leader.to_string()], Duration::from_secs(10))?;
    let value = "v".repeat(args.value_size);
    for i in 0..args.keys {
        let resp = client
            .request(&format!("SET {} {value}", key(i, args.key_size)))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if resp != "OK" {
            bail!("preload failed: {resp}");
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = Arc::new(Args::parse());
    if args.connections == 0 || args.inflight == 0 {
        bail!("--connections and --inflight must be at least 1");
    }
    let leader = find_leader(&args.addr).context("finding the leader")?;
    if args.preload {
        preload(leader, &args)?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let stats = Arc::new(Stats {
        done: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        latency_us: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3)?),
    });
    let progress = if args.quiet || args.json {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::new((args.duration * 10.0) as u64);
        bar.set_style(ProgressStyle::with_template(
            "{bar:40} {elapsed}/{duration} {msg}",
        )?);
        bar
    };
    let start = Instant::now();
    let result: Result<()> = runtime.block_on(async {
        let mut tasks = Vec::new();
        for id in 0..args.connections {
            let task = match args.protocol {
                Protocol::Text => tokio::spawn(connection(leader, id, args.clone(), stats.clone())),
                Protocol::Binary => {
                    tokio::spawn(binary_connection(leader, id, args.clone(), stats.clone()))
                }
            };
            tasks.push(task);
        }
        let deadline = start + Duration::from_secs_f64(args.duration);
        while !stats.stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let done = stats.done.load(Ordering::Relaxed);
            progress.set_position((start.elapsed().as_secs_f64() * 10.0) as u64);
            progress.set_message(format!(
                "{:.0} req/s",
                done as f64 / start.elapsed().as_secs_f64()
            ));
            if args.count.is_none() && Instant::now() >= deadline {
                stats.stop.store(true, Ordering::Relaxed);
            }
        }
        for t in tasks {
            t.await??;
        }
        Ok(())
    });
    progress.finish_and_clear();
    result?;
    let elapsed = start.elapsed().as_secs_f64();
    let hist = stats
        .latency_us
        .lock()
        .map_err(|_| anyhow::anyhow!("histogram lock poisoned"))?;
    let done = stats.done.load(Ordering::Relaxed);
    let errors = stats.errors.load(Ordering::Relaxed);
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    if args.json {
        println!(
            "{{\"requests\":{done},\"errors\":{errors},\"seconds\":{elapsed:.3},\"rps\":{:.1},\"p50_ms\":{:.3},\"p90_ms\":{:.3},\"p99_ms\":{:.3},\"p999_ms\":{:.3},\"max_ms\":{:.3},\"connections\":{},\"inflight\":{},\"reads\":{}}}",
            done as f64 / elapsed,
            ms(0.5),
            ms(0.9),
            ms(0.99),
            ms(0.999),
            hist.max() as f64 / 1000.0,
            args.connections,
            args.inflight,
            args.reads
        );
    } else {
        println!(
            "{done} requests in {elapsed:.2} s to {leader}: {:.0} req/s, {errors} errors",
            done as f64 / elapsed
        );
        println!(
            "latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            ms(0.5),
            ms(0.9),
            ms(0.99),
            ms(0.999),
            hist.max() as f64 / 1000.0
        );
    }
    Ok(())
}
