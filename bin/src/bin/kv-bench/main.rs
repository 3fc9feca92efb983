//! `kv-bench`: load generator for the store. Keeps requests in flight on
//! each connection, follows the leader when it moves (a redirect or a lost
//! connection), sends again what surely did not happen, counts every
//! failure by kind, and reports throughput and latency percentiles (HDR
//! histogram) with a progress bar, partial results included. `--load N`
//! first writes keys 0..N in multi-key batches (one log entry each).

// A binary talks to its user on the terminal.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod run;
mod wire;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;

use crate::run::{run_phase, Phase, PhaseResult};

/// Load generator for kv-server.
#[derive(Debug, Parser, Clone)]
#[command(version)]
pub struct Args {
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
    /// Requests in flight per connection (pipelined).
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
    #[arg(long, value_enum, default_value_t = Protocol::Binary)]
    protocol: Protocol,
    /// Seed of the key and operation sequence (each connection derives its own).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Before measuring, write keys 0..N in batches (binary protocol), then
    /// measure as asked (skip measuring with --duration 0).
    #[arg(long)]
    load: Option<u64>,
    /// Keys per write when loading.
    #[arg(long, default_value_t = 256)]
    load_batch: usize,
    /// Before measuring, write every key once (same as --load <keys>).
    #[arg(long)]
    preload: bool,
    /// Write every answered request to this file: unix ms, latency µs, ok.
    #[arg(long)]
    latency_log: Option<std::path::PathBuf>,
    /// Print one JSON object with the results (for scripts) instead of the table.
    #[arg(long)]
    json: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Send writes without exactly-once sessions. With them (the default)
    /// each connection opens a session and a write whose answer was lost
    /// is sent again with its number, so it counts as served, not failed.
    #[arg(long)]
    no_sessions: bool,
    /// The cluster CA certificate (PEM): speak TLS and trust the nodes it
    /// signed.
    #[arg(long, env = "KV_TLS_CA")]
    tls_ca: Option<std::path::PathBuf>,
    /// A client certificate (PEM) the cluster CA signed (with --tls-key).
    #[arg(long, env = "KV_TLS_CERT", requires_all = ["tls_key", "tls_ca"])]
    tls_cert: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "KV_TLS_KEY", requires_all = ["tls_cert", "tls_ca"])]
    tls_key: Option<std::path::PathBuf>,
}

impl Args {
    /// The TLS connector the flags describe, if TLS is on.
    fn tls(&self) -> Result<Option<tokio_rustls::TlsConnector>> {
        let Some(ca) = &self.tls_ca else {
            return Ok(None);
        };
        let identity = self.tls_cert.as_deref().zip(self.tls_key.as_deref());
        let config =
            kv_net::tls::client_tls(ca, identity).context("loading the TLS certificates")?;
        Ok(Some(tokio_rustls::TlsConnector::from(config)))
    }
}

/// The client protocol spoken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    /// The line protocol.
    Text,
    /// The framed binary protocol (requests pipelined with ids).
    Binary,
}

/// Key `i`, `size` bytes long.
pub fn key(i: u64, size: usize) -> String {
    let k = format!("k{i:0>width$}", width = size.saturating_sub(1));
    k[..size.max(1).min(k.len())].to_string()
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    if args.connections == 0 || args.inflight == 0 || args.load_batch == 0 {
        bail!("--connections, --inflight and --load-batch must be at least 1");
    }
    let window = kv_engine::kv::sessions::RESULTS_PER_SESSION;
    if !args.no_sessions && args.inflight > window {
        bail!("--inflight above {window} needs --no-sessions (a session keeps the answers of {window} writes)");
    }
    if args.preload && args.load.is_none() {
        args.load = Some(args.keys);
    }
    if args.load.is_some() && args.protocol == Protocol::Text {
        bail!("--load writes multi-key batches, which only the binary protocol carries");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    if let Some(n) = args.load {
        let started = Instant::now();
        let loaded = runtime.block_on(run_phase(&args, Phase::Load(n)))?;
        let secs = started.elapsed().as_secs_f64();
        if !args.json {
            println!(
                "loaded {n} keys in {secs:.1} s ({:.0} keys/s, {} batches, {} failed)",
                n as f64 / secs,
                loaded.ok,
                loaded.failed_total()
            );
        }
        if loaded.failed_total() > 0 {
            report_errors(&loaded);
        }
    }
    if args.duration <= 0.0 && args.count.is_none() {
        return Ok(());
    }
    let result = runtime.block_on(run_phase(&args, Phase::Measure))?;
    if let Some(path) = &args.latency_log {
        write_latency_log(path, &result)?;
    }
    if args.json {
        print_json(&args, &result);
    } else {
        print_table(&args, &result);
    }
    Ok(())
}

fn write_latency_log(path: &std::path::Path, r: &PhaseResult) -> Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    for &(ms, us, ok) in &r.latencies {
        writeln!(out, "{ms} {us} {}", u8::from(ok))?;
    }
    out.flush()?;
    Ok(())
}

fn workload(args: &Args) -> String {
    format!(
        "{} connections x {} in flight, {:?} protocol, {} keys of {} B, values of {} B, {:.0}% reads, seed {}",
        args.connections,
        args.inflight,
        args.protocol,
        args.keys,
        args.key_size,
        args.value_size,
        args.reads * 100.0,
        args.seed
    )
}

fn ms(hist: &Histogram<u64>, q: f64) -> f64 {
    hist.value_at_quantile(q) as f64 / 1000.0
}

fn print_table(args: &Args, r: &PhaseResult) {
    println!("workload: {}", workload(args));
    println!(
        "{} requests in {:.2} s: {:.0} req/s ok, {} failed; {} sent again (safe), {} connection moves to a new leader",
        r.ok + r.failed_total(),
        r.seconds,
        r.ok as f64 / r.seconds,
        r.failed_total(),
        r.retried.values().sum::<u64>(),
        r.leader_moves
    );
    println!(
        "latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
        ms(&r.hist, 0.5),
        ms(&r.hist, 0.9),
        ms(&r.hist, 0.99),
        ms(&r.hist, 0.999),
        r.hist.max() as f64 / 1000.0
    );
    report_errors(r);
}

fn report_errors(r: &PhaseResult) {
    let show = |label: &str, kinds: &BTreeMap<&'static str, u64>| {
        if !kinds.is_empty() {
            let parts: Vec<String> = kinds.iter().map(|(k, n)| format!("{k}: {n}")).collect();
            println!("{label}: {}", parts.join(", "));
        }
    };
    show("failed by kind", &r.failed);
    show("sent again by kind", &r.retried);
}

fn print_json(args: &Args, r: &PhaseResult) {
    let kinds = |m: &BTreeMap<&'static str, u64>| {
        let parts: Vec<String> = m.iter().map(|(k, n)| format!("\"{k}\":{n}")).collect();
        format!("{{{}}}", parts.join(","))
    };
    println!(
        "{{\"requests\":{},\"ok\":{},\"errors\":{},\"errors_by_kind\":{},\"retried_by_kind\":{},\"leader_moves\":{},\"seconds\":{:.3},\"rps\":{:.1},\"p50_ms\":{:.3},\"p90_ms\":{:.3},\"p99_ms\":{:.3},\"p999_ms\":{:.3},\"max_ms\":{:.3},\"connections\":{},\"inflight\":{},\"reads\":{},\"seed\":{}}}",
        r.ok + r.failed_total(),
        r.ok,
        r.failed_total(),
        kinds(&r.failed),
        kinds(&r.retried),
        r.leader_moves,
        r.seconds,
        r.ok as f64 / r.seconds,
        ms(&r.hist, 0.5),
        ms(&r.hist, 0.9),
        ms(&r.hist, 0.99),
        ms(&r.hist, 0.999),
        r.hist.max() as f64 / 1000.0,
        args.connections,
        args.inflight,
        args.reads,
        args.seed
    );
}

/// The answer timeout of one request, after which its connection is taken
/// for lost.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
