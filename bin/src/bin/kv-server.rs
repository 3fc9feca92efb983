//! `kv-server`: runs one node of the store, or (`--dev`) a whole local
//! three-node cluster on loopback for trying it out.

// A binary talks to its user on the terminal.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use kv_bin::logging::LogFormat;
use kv_bin::members::parse_members;
use kv_engine::raft::ReadMode;
use kv_net::fs::StdFs;
use kv_net::node::{Member, NodeConfig};
use kv_net::server::Node;
use kv_net::tls::{NodeTls, TlsFiles};

/// The allocator: mimalloc's per-thread free lists cost less than glibc's
/// arenas for the many small, short-lived buffers of a node under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One node of a Raft-replicated key-value store.
///
/// Clients speak a line protocol on the client port: SET k v, GET k, DEL k,
/// CAS k expected new, MSET k v [k v ...], PING. Followers answer REDIRECT
/// <leader>.
#[derive(Debug, Parser)]
#[command(version, subcommand_negates_reqs = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,

    /// Start a whole local cluster on 127.0.0.1 in this process (data under --data-dir).
    #[arg(long, env = "KV_DEV")]
    dev: bool,

    /// Number of nodes of the --dev cluster.
    #[arg(long, env = "KV_DEV_NODES", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=9))]
    dev_nodes: u64,

    /// First client port of the --dev cluster (peers use this + 100).
    #[arg(long, env = "KV_DEV_PORT", default_value_t = 7001)]
    dev_port: u16,

    /// This node's id (one of --members).
    #[arg(long, env = "KV_ID", required_unless_present = "dev")]
    id: Option<u64>,

    /// All members as ID=PEER_ADDR/CLIENT_ADDR, comma-separated, e.g.
    /// 1=10.0.0.1:7100/10.0.0.1:7000,2=...,3=...
    #[arg(
        long,
        env = "KV_MEMBERS",
        value_delimiter = ',',
        required_unless_present = "dev"
    )]
    members: Vec<String>,

    /// Directory of the WAL and snapshots (with --dev: of all nodes, one subdirectory each).
    #[arg(long, env = "KV_DATA_DIR", default_value = "kv-data")]
    data_dir: PathBuf,

    /// Cluster id; peer frames with another id are refused.
    #[arg(long, env = "KV_CLUSTER_ID", default_value_t = 1)]
    cluster_id: u64,

    /// Threads that run the node's tasks (default: one per core; 0: every
    /// task on the main thread, no work stealing between threads).
    #[arg(long, env = "KV_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(0..=1024))]
    worker_threads: Option<u16>,

    /// Length of one Raft tick, in milliseconds.
    #[arg(long, env = "KV_TICK_MS", default_value_t = 10)]
    tick_ms: u64,

    /// Election timeout in ticks (randomised up to twice this).
    #[arg(long, env = "KV_ELECTION_TICKS", default_value_t = 15)]
    election_ticks: u64,

    /// Heartbeat interval in ticks.
    #[arg(long, env = "KV_HEARTBEAT_TICKS", default_value_t = 3)]
    heartbeat_ticks: u64,

    /// Snapshot after this many applied entries (each node adds up to a
    /// quarter at random, so nodes do not snapshot together).
    #[arg(long, env = "KV_SNAPSHOT_ENTRIES", default_value_t = 100_000)]
    snapshot_entries: u64,

    /// ... or after this many bytes of applied entries. A leader keeps up
    /// to 4x this much log (payload plus 64 bytes an entry) for a follower
    /// that is catching up.
    #[arg(long, env = "KV_SNAPSHOT_BYTES", default_value_t = 64 << 20)]
    snapshot_bytes: u64,

    /// Longest request line accepted; a longer one gets ERR and the connection closes.
    #[arg(long, env = "KV_MAX_LINE_BYTES", default_value_t = 1 << 20)]
    max_line_bytes: usize,

    /// Longest key accepted.
    #[arg(long, env = "KV_MAX_KEY_BYTES", default_value_t = 1024)]
    max_key_bytes: usize,

    /// Longest value accepted.
    #[arg(long, env = "KV_MAX_VALUE_BYTES", default_value_t = 512 * 1024)]
    max_value_bytes: usize,

    /// Client connections beyond this are refused.
    #[arg(long, env = "KV_MAX_CONNECTIONS", default_value_t = 1024)]
    max_connections: usize,

    /// Close a client connection silent for this many seconds.
    #[arg(long, env = "KV_IDLE_TIMEOUT_SECS", default_value_t = 300)]
    idle_timeout_secs: u64,

    /// Answer ERR timeout to a request not done in this many milliseconds.
    #[arg(long, env = "KV_REQUEST_TIMEOUT_MS", default_value_t = 5000)]
    request_timeout_ms: u64,

    /// Inbound peer connections held at once; more are closed at once, and
    /// one that names no member within 5 s is closed.
    #[arg(long, env = "KV_MAX_PEER_CONNECTIONS", default_value_t = 64)]
    max_peer_connections: usize,

    /// Binary requests one client connection may have in flight.
    #[arg(long, env = "KV_MAX_PIPELINE", default_value_t = 256)]
    max_pipeline: usize,

    /// A password Redis clients must give with AUTH (or HELLO ... AUTH)
    /// before any other command. Without it, Redis clients need none
    /// (with mutual TLS on, the client certificate is what admits them).
    /// Prefer the environment variable: a flag shows in `ps`.
    #[arg(long, env = "KV_REDIS_PASSWORD", hide_env_values = true)]
    redis_password: Option<String>,

    /// Bytes all clients together may hold in requests not yet answered;
    /// past it, connections stop reading until answers free some.
    #[arg(long, env = "KV_MAX_REQUEST_BYTES", default_value_t = 64 << 20)]
    max_request_bytes: usize,

    /// Bytes of answers queued for one connection; a client that lets more
    /// pile up without reading is disconnected.
    #[arg(long, env = "KV_MAX_ANSWER_BYTES", default_value_t = 8 << 20)]
    max_answer_bytes: usize,

    /// Disconnect a client whose answers make no progress for this many
    /// milliseconds (it does not read them).
    #[arg(long, env = "KV_WRITE_TIMEOUT_MS", default_value_t = 10_000)]
    write_timeout_ms: u64,

    /// Bytes of entries a leader holds proposed but not yet committed;
    /// proposals beyond it are refused as overloaded.
    #[arg(long, env = "KV_MAX_UNCOMMITTED_BYTES", default_value_t = 64 << 20)]
    max_uncommitted_bytes: u64,

    /// This node's TLS certificate chain (PEM). With --tls-key and --tls-ca
    /// it turns on mutual TLS on the peer and client ports: peers and
    /// clients must present a certificate the CA signed.
    #[arg(long, env = "KV_TLS_CERT", requires_all = ["tls_key", "tls_ca"])]
    tls_cert: Option<PathBuf>,

    /// This node's TLS private key (PEM).
    #[arg(long, env = "KV_TLS_KEY", requires_all = ["tls_cert", "tls_ca"])]
    tls_key: Option<PathBuf>,

    /// The cluster CA certificate (PEM) that signs every node's and
    /// client's certificate.
    #[arg(long, env = "KV_TLS_CA", requires_all = ["tls_cert", "tls_key"])]
    tls_ca: Option<PathBuf>,

    /// With TLS on, let clients connect without a certificate (server-only
    /// TLS on the client port; peers always need one).
    #[arg(long, env = "KV_TLS_CLIENT_CERT_OPTIONAL")]
    tls_client_cert_optional: bool,

    /// With --dev: make a throwaway CA and certificates under
    /// <data-dir>/tls and run the local cluster with mutual TLS.
    #[arg(long, requires = "dev", conflicts_with = "tls_cert")]
    dev_tls: bool,

    /// Bytes of appends in flight to one follower.
    #[arg(long, env = "KV_MAX_INFLIGHT_BYTES", default_value_t = 8 << 20)]
    max_inflight_bytes: u64,

    /// Serve /metrics (Prometheus), /health and /status (JSON) over HTTP on
    /// this address (with --dev: the first node's; the others count up).
    #[arg(long, env = "KV_HTTP_ADDR")]
    http_addr: Option<SocketAddr>,

    /// How a leader confirms it still leads before a read: `index`
    /// (ReadIndex: a heartbeat round a majority answers, safe whatever the
    /// clocks do) or `lease` (served at once while a majority answered a
    /// heartbeat within a lease; assumes no member's clock runs more than
    /// --max-clock-drift-percent faster than another's).
    #[arg(long, env = "KV_READ_MODE", value_enum, default_value_t = ReadModeArg::Index)]
    read_mode: ReadModeArg,

    /// For --read-mode lease: how far apart members' clock rates may be, in
    /// percent; the lease is shortened by as much.
    #[arg(long, env = "KV_MAX_CLOCK_DRIFT_PERCENT", default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=50))]
    max_clock_drift_percent: u64,

    /// Log lines as text (colour only on a terminal) or JSON objects.
    #[arg(long, env = "KV_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// How a leader confirms its leadership before a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ReadModeArg {
    /// ReadIndex: one heartbeat round per batch of reads.
    Index,
    /// A lease renewed by heartbeats.
    Lease,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Reads a data directory without starting a node or changing it, and
    /// prints what is there and what is damaged. Exit code: 0 healthy (or a
    /// fresh directory), 1 damaged or recovering, 2 unreadable.
    Check {
        /// The data directory of one node.
        #[arg(long, env = "KV_DATA_DIR", default_value = "kv-data")]
        data_dir: PathBuf,
    },
    /// Writes a throwaway CA and certificates for nodes 1..=N and one
    /// client (PEM), for trying mutual TLS; never for production.
    DevCerts {
        /// Where to write them.
        #[arg(long, default_value = "kv-certs")]
        out: PathBuf,
        /// How many node certificates.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=99))]
        nodes: u64,
    },
}

impl Args {
    fn node_config(
        &self,
        id: u64,
        members: BTreeMap<u64, Member>,
        data_dir: PathBuf,
        tls: Option<&TlsFiles>,
    ) -> Result<NodeConfig> {
        let mut cfg = NodeConfig::new(id, members, data_dir);
        if let Some(files) = tls {
            let tls = NodeTls::load(files, !self.tls_client_cert_optional)
                .context("loading the TLS certificates")?;
            cfg.tls = Some(tls);
        }
        cfg.cluster_id = self.cluster_id;
        cfg.tick = Duration::from_millis(self.tick_ms);
        cfg.election_ticks = self.election_ticks;
        cfg.heartbeat_ticks = self.heartbeat_ticks;
        cfg.snapshot_entries = self.snapshot_entries;
        cfg.snapshot_bytes = self.snapshot_bytes;
        cfg.client.text.max_line_bytes = self.max_line_bytes;
        cfg.client.text.max_key_bytes = self.max_key_bytes;
        cfg.client.text.max_value_bytes = self.max_value_bytes;
        cfg.client.max_connections = self.max_connections;
        cfg.client.idle_timeout = Duration::from_secs(self.idle_timeout_secs);
        cfg.client.request_timeout = Duration::from_millis(self.request_timeout_ms);
        cfg.max_peer_connections = self.max_peer_connections;
        cfg.client.max_pipeline = self.max_pipeline;
        cfg.client.redis_password = self.redis_password.clone();
        cfg.client.max_request_bytes = self.max_request_bytes;
        cfg.client.max_answer_bytes = self.max_answer_bytes;
        cfg.client.write_timeout = Duration::from_millis(self.write_timeout_ms);
        cfg.max_uncommitted_bytes = self.max_uncommitted_bytes;
        cfg.max_inflight_bytes = self.max_inflight_bytes;
        cfg.read_mode = match self.read_mode {
            ReadModeArg::Index => ReadMode::Index,
            ReadModeArg::Lease => ReadMode::Lease,
        };
        cfg.max_clock_drift_percent = self.max_clock_drift_percent;
        Ok(cfg)
    }

    /// The TLS files named by the flags, if TLS is on.
    fn tls_files(&self) -> Option<TlsFiles> {
        Some(TlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            ca: self.tls_ca.clone()?,
        })
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            // One line with its causes; no backtrace for a user's mistake.
            eprintln!("kv-server: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &Args) -> Result<ExitCode> {
    match &args.command {
        Some(Command::Check { data_dir }) => {
            let (report, code) = kv_bin::check::check(data_dir);
            print!("{report}");
            return Ok(ExitCode::from(u8::try_from(code).unwrap_or(2)));
        }
        Some(Command::DevCerts { out, nodes }) => {
            let certs = kv_bin::dev_certs::write(out, *nodes)?;
            println!("wrote a throwaway CA and certificates to {}", out.display());
            println!("  CA:      {}", certs.ca.display());
            for (i, node) in certs.nodes.iter().enumerate() {
                println!(
                    "  node {}:  {} {}",
                    i + 1,
                    node.cert.display(),
                    node.key.display()
                );
            }
            println!(
                "  client:  {} {}",
                certs.client.cert.display(),
                certs.client.key.display()
            );
            return Ok(ExitCode::SUCCESS);
        }
        None => {}
    }
    kv_bin::logging::init(args.log_format);
    let mut builder = match args.worker_threads {
        // Disk calls still go to the blocking pool's threads.
        Some(0) => tokio::runtime::Builder::new_current_thread(),
        Some(threads) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(usize::from(threads));
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = builder
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        if args.dev {
            run_dev(args).await
        } else {
            run_one(args).await
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

/// A cluster of one or two nodes runs, but loses availability with any one
/// node; say so at start.
fn warn_if_small(members: usize) {
    if members < 3 {
        tracing::warn!(
            members,
            "a cluster of fewer than 3 nodes stops serving when any node is down; use 3 or 5"
        );
    }
}

async fn run_one(args: &Args) -> Result<()> {
    let members = parse_members(&args.members).context("parsing --members")?;
    let id = args.id.context("--id is required")?;
    if !members.contains_key(&id) {
        bail!(
            "--id {id} is not one of the --members ({})",
            members
                .keys()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    warn_if_small(members.len());
    let mut cfg = args.node_config(
        id,
        members,
        args.data_dir.clone(),
        args.tls_files().as_ref(),
    )?;
    cfg.http_addr = args.http_addr;
    let node = Node::start(cfg, StdFs::new()).await.with_context(|| {
        format!(
            "starting node {id} with data in {}",
            args.data_dir.display()
        )
    })?;
    tracing::info!(node = id, client_addr = %node.client_addr(), http_addr = ?node.http_addr(), "serving clients");
    let stopper = node.stopper();
    let stopped = node.wait();
    tokio::pin!(stopped);
    tokio::select! {
        result = &mut stopped => {
            result.with_context(|| format!("node {id} stopped with an error"))?;
            tracing::info!(node = id, "node stopped");
            return Ok(());
        }
        () = signal() => stopper.stop(),
    }
    stopped
        .await
        .with_context(|| format!("node {id} stopped with an error"))?;
    tracing::info!(node = id, "node stopped");
    Ok(())
}

/// Runs a whole local cluster in this process until Ctrl-C.
async fn run_dev(args: &Args) -> Result<()> {
    warn_if_small(args.dev_nodes as usize);
    let members = dev_members(args);
    let certs = if args.dev_tls {
        let dir = args.data_dir.join("tls");
        Some(kv_bin::dev_certs::write(&dir, args.dev_nodes).context("making dev certificates")?)
    } else {
        None
    };
    let mut nodes = Vec::new();
    for &id in members.keys() {
        let dir = args.data_dir.join(format!("node{id}"));
        let tls = dev_tls_files(args, certs.as_ref(), id)?;
        let mut cfg = args.node_config(id, members.clone(), dir.clone(), tls.as_ref())?;
        // The dev cluster serves HTTP by default, at the client ports + 200.
        let http_base = args
            .http_addr
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], args.dev_port + 200)));
        cfg.http_addr = Some(SocketAddr::new(
            http_base.ip(),
            http_base.port().saturating_add(id as u16 - 1),
        ));
        let node = Node::start(cfg, StdFs::new())
            .await
            .with_context(|| format!("starting dev node {id} (data in {})", dir.display()))?;
        nodes.push(node);
    }
    print_dev_banner(args, &members, &nodes, certs.as_ref());
    signal().await;
    for node in &nodes {
        node.shutdown();
    }
    for node in nodes {
        node.wait()
            .await
            .context("a dev node stopped with an error")?;
    }
    tracing::info!("dev cluster stopped");
    Ok(())
}

/// The dev cluster's members: client ports from --dev-port up, peer
/// ports 100 above them, all on 127.0.0.1.
fn dev_members(args: &Args) -> BTreeMap<u64, Member> {
    (1..=args.dev_nodes)
        .map(|id| {
            let client_port = args.dev_port + id as u16 - 1;
            let member = Member {
                peer_addr: SocketAddr::from(([127, 0, 0, 1], client_port + 100)),
                client_addr: SocketAddr::from(([127, 0, 0, 1], client_port)),
            };
            (id, member)
        })
        .collect()
}

/// A dev node's TLS files: its made-up certificate with --dev-tls, else
/// whatever the flags name.
fn dev_tls_files(
    args: &Args,
    certs: Option<&kv_bin::dev_certs::DevCerts>,
    id: u64,
) -> Result<Option<TlsFiles>> {
    let Some(certs) = certs else {
        return Ok(args.tls_files());
    };
    let node = certs
        .nodes
        .get(id as usize - 1)
        .context("a dev certificate per node")?;
    Ok(Some(TlsFiles {
        cert: node.cert.clone(),
        key: node.key.clone(),
        ca: certs.ca.clone(),
    }))
}

/// Tells the user where the dev cluster listens and how to reach it.
fn print_dev_banner(
    args: &Args,
    members: &BTreeMap<u64, Member>,
    nodes: &[Node],
    certs: Option<&kv_bin::dev_certs::DevCerts>,
) {
    let addrs: Vec<String> = members
        .values()
        .map(|m| m.client_addr.to_string())
        .collect();
    println!(
        "kv-server: local cluster of {} nodes is up; data under {}",
        nodes.len(),
        args.data_dir.display()
    );
    for (node, (id, m)) in nodes.iter().zip(members) {
        let http = node
            .http_addr()
            .map(|a| format!("  http at {a}"))
            .unwrap_or_default();
        println!(
            "  node {id}: clients at {}  peers at {}{http}",
            m.client_addr, m.peer_addr
        );
    }
    let env = match certs {
        Some(c) => format!(
            "KV_TLS_CA={} KV_TLS_CERT={} KV_TLS_KEY={} ",
            c.ca.display(),
            c.client.cert.display(),
            c.client.key.display()
        ),
        None => String::new(),
    };
    if certs.is_some() {
        println!("mutual TLS is on: every client needs the client certificate below");
    }
    println!(
        "connect with:  {env}cargo run --bin kv-cli -- --addr {}",
        addrs.join(",")
    );
    println!("stop with Ctrl-C");
}

/// Waits for SIGINT or SIGTERM.
async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT: stopping"),
        _ = term => tracing::info!("SIGTERM: stopping"),
    }
}
