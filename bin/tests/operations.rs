//! Process-level tests of what an operator uses: `kv-cli status`, the HTTP
//! endpoint (`/health`, `/metrics` parsed by a Prometheus text parser,
//! `/status`), leader transfer by command and on SIGTERM, a rolling restart
//! under load that fails no request, and configuration mistakes reported
//! in one line.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use support::{free_port, said, Cluster};

/// A cluster whose nodes serve HTTP on ports of their own; returns them too.
fn cluster_with_http(name: &str, n: usize, extra: &[&str]) -> (Cluster, Vec<SocketAddr>) {
    let http: Vec<SocketAddr> = (0..n)
        .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
        .collect();
    let per_node = http
        .iter()
        .map(|a| vec!["--http-addr".to_string(), a.to_string()])
        .collect();
    (Cluster::start_each(name, n, extra, per_node), http)
}

/// `GET path` on `addr`: the status code and the body.
fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nhost: test\r\n\r\n").ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

fn kv_cli(c: &Cluster, n: usize, words: &[&str]) -> (Option<i32>, String) {
    let addrs = (1..=n)
        .map(|id| c.client(id).to_string())
        .collect::<Vec<_>>()
        .join(",");
    let out = Command::new(env!("CARGO_BIN_EXE_kv-cli"))
        .args(["--addr", &addrs, "--timeout", "5"])
        .args(words)
        .output()
        .unwrap();
    (out.status.code(), said(&out))
}

/// Waits until `check` holds, or fails with `what`.
fn eventually(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn kv_cli_status_shows_every_member_and_exactly_one_leader() {
    let c = Cluster::start("ops-status", 3, &[]);
    c.request("SET a 1");
    let (code, table) = kv_cli(&c, 3, &["status"]);
    assert_eq!(code, Some(0), "{table}");
    let rows: Vec<&str> = table
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| ID"))
        .collect();
    assert_eq!(rows.len(), 3, "{table}");
    assert_eq!(
        rows.iter().filter(|r| r.contains("| leader ")).count(),
        1,
        "{table}"
    );
    assert!(
        rows.iter().all(|r| r.contains("| true ")),
        "all reachable: {table}"
    );
    let (code, json) = kv_cli(&c, 3, &["status", "--json"]);
    assert_eq!(code, Some(0));
    assert_eq!(json.matches("\"role\":\"leader\"").count(), 1, "{json}");
    assert_eq!(json.matches("\"reachable\":true").count(), 3, "{json}");

    // A node that is down is shown, and said to be unreachable.
    let mut c = c;
    let follower = (1..=3)
        .find(|&i| i != c.leader(Duration::from_secs(5)))
        .unwrap();
    c.kill(follower);
    let (_, table) = kv_cli(&c, 3, &["status"]);
    assert_eq!(table.matches("| false ").count(), 1, "{table}");
}

#[test]
fn health_metrics_and_status_over_http() {
    let (mut c, http) = cluster_with_http("ops-http", 3, &[]);
    c.leader(Duration::from_secs(10));
    for i in 0..20 {
        c.request(&format!("SET k{i} v{i}"));
    }
    assert_eq!(c.request("GET k1"), "VALUE v1");
    // Whichever node leads now (a loaded machine may have moved it).
    let leader = c.leader(Duration::from_secs(10));
    for &addr in &http {
        eventually(Duration::from_secs(5), "every node healthy", || {
            http_get(addr, "/health").is_some_and(|(code, _)| code == 200)
        });
    }

    // /metrics, read by a Prometheus text parser.
    let (code, body) = http_get(http[leader - 1], "/metrics").unwrap();
    assert_eq!(code, 200);
    let lines = body.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
    let value = |name: &str, label: Option<(&str, &str)>| -> Option<f64> {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
    };
    assert_eq!(value("kv_raft_is_leader", None), Some(1.0), "{body}");
    assert!(value("kv_raft_term", None).unwrap() >= 1.0);
    assert!(value("kv_raft_commit_index", None).unwrap() >= 21.0);
    assert!(
        value("kv_raft_proposals_total", None).unwrap() >= 20.0,
        "{body}"
    );
    assert!(value("kv_client_requests_total", Some(("op", "set"))).unwrap() >= 20.0);
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "kv_wal_fsync_duration_seconds"),
        "the fsync latency histogram: {body}"
    );
    assert!(value("kv_peer_messages_sent_total", None).unwrap() > 0.0);

    // /status, as JSON.
    let (code, status) = http_get(http[leader - 1], "/status").unwrap();
    assert_eq!(code, 200);
    assert!(status.contains("\"role\":\"leader\""), "{status}");
    assert!(status.contains(&format!("\"id\":{leader}")), "{status}");

    // With the two others gone, no node can serve: /health says so.
    let others: Vec<usize> = (1..=3).filter(|&i| i != leader).collect();
    for &o in &others {
        c.kill(o);
    }
    eventually(Duration::from_secs(5), "the lone node unhealthy", || {
        http_get(http[leader - 1], "/health").is_some_and(|(code, _)| code == 503)
    });
    let (_, why) = http_get(http[leader - 1], "/health").unwrap();
    assert!(why.contains("quorum") || why.contains("no leader"), "{why}");
}

#[test]
fn transfer_leader_hands_over_to_the_member_named() {
    let c = Cluster::start("ops-transfer", 3, &[]);
    let leader = c.leader(Duration::from_secs(10));
    c.request("SET before transfer");
    let to = (1..=3).find(|&i| i != leader).unwrap();
    let (code, out) = kv_cli(&c, 3, &["transfer-leader", "--to", &to.to_string()]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(&format!("member {to} leads now")), "{out}");
    assert_eq!(c.leader(Duration::from_secs(5)), to);
    assert_eq!(c.request("GET before"), "VALUE transfer");
    let (code, out) = kv_cli(&c, 3, &["transfer-leader", "--to", "9"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("cannot lead"), "{out}");
}

#[test]
fn a_leader_stopped_with_sigterm_hands_over_before_it_exits() {
    // Elections take 4-8 s here: a hand-over (well under 3 s even on a
    // loaded machine, shutdown and fsyncs included) is told apart from a
    // timeout.
    let mut c = Cluster::start(
        "ops-sigterm",
        3,
        &[
            "--tick-ms",
            "100",
            "--election-ticks",
            "40",
            "--heartbeat-ticks",
            "2",
        ],
    );
    let leader = c.leader(Duration::from_secs(20));
    c.request("SET k v");
    let stopped = Instant::now();
    c.terminate(leader);
    let next = c.leader(Duration::from_secs(10));
    let took = stopped.elapsed();
    assert_ne!(next, leader);
    assert!(
        took < Duration::from_secs(3),
        "a new leader {took:?} after SIGTERM: handed over, not elected after a timeout"
    );
    assert!(
        c.log(leader).contains("handing leadership over"),
        "{}",
        c.log(leader)
    );
    assert!(
        c.log(leader).contains("node stopped"),
        "a last line: {}",
        c.log(leader)
    );
    assert_eq!(c.request("GET k"), "VALUE v");
}

/// kv-bench against every member of `c`, reporting JSON on stdout.
fn kv_bench(c: &Cluster, args: &[&str]) -> std::process::Child {
    let addrs = (1..=3)
        .map(|id| c.client(id).to_string())
        .collect::<Vec<_>>()
        .join(",");
    Command::new(env!("CARGO_BIN_EXE_kv-bench"))
        .args(["--addr", &addrs, "--json"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// kv-bench's JSON report, once it has finished with no failed request.
fn report_without_errors(bench: std::process::Child) -> String {
    let out = bench.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains("\"errors\":0,"),
        "no request failed: {report}"
    );
    report
}

#[test]
fn a_rolling_restart_under_load_fails_no_request() {
    let mut c = Cluster::start("ops-rolling", 3, &[]);
    c.leader(Duration::from_secs(10));
    let bench = kv_bench(
        &c,
        &[
            "--connections",
            "8",
            "--inflight",
            "4",
            "--duration",
            "20",
            "--reads",
            "0.5",
        ],
    );
    std::thread::sleep(Duration::from_secs(2));
    for id in 1..=3 {
        c.terminate(id);
        std::thread::sleep(Duration::from_millis(500));
        c.spawn(id);
        // Caught up and voting before the next one goes.
        let mut status = String::new();
        eventually(
            Duration::from_secs(10),
            "the restarted node caught up",
            || {
                status = support::try_request(c.client(id), "STATUS").unwrap_or_default();
                status.contains("health=ok")
            },
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    let report = report_without_errors(bench);
    let done: u64 = report
        .split("\"ok\":")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(done > 1000, "the load kept going: {report}");
}

/// A leader killed outright (no handover) while kv-bench writes: with its
/// sessions, every write whose answer the kill swallowed is sent again with
/// its number and answered exactly once, so none counts as failed. (The
/// same run with `--no-sessions` reports dozens of "connection lost
/// (outcome unknown)" here; that is not asserted, it depends on timing.)
#[test]
fn writes_in_sessions_ride_out_a_leader_killed_mid_write() {
    let mut c = Cluster::start("ops-session-kill", 3, &[]);
    let leader = c.leader(Duration::from_secs(10));
    let bench = kv_bench(
        &c,
        &["--connections", "16", "--inflight", "4", "--duration", "8"],
    );
    std::thread::sleep(Duration::from_secs(3));
    c.kill(leader);
    report_without_errors(bench);
}

#[test]
fn configuration_mistakes_are_one_line_with_their_cause() {
    let out = Command::new(env!("CARGO_BIN_EXE_kv-server"))
        .args([
            "--id",
            "1",
            "--members",
            "1=127.0.0.1:7100/127.0.0.1:7000,2=127.0.0.1:7100/127.0.0.1:7001",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("127.0.0.1:7100") && err.contains("distinct"),
        "{err}"
    );
    assert!(
        !err.contains("backtrace") && !err.contains("Stack"),
        "{err}"
    );
}

#[test]
fn a_peer_that_goes_away_is_reported_once_and_its_return_too() {
    let mut c = Cluster::start("ops-peer-down", 3, &[]);
    let leader = c.leader(Duration::from_secs(10));
    let gone = (1..=3).find(|&i| i != leader).unwrap();
    c.kill(gone);
    let unreachable = format!("peer={gone}");
    eventually(
        Duration::from_secs(5),
        "a WARN for the peer that went away",
        || {
            c.log(leader).lines().any(|l| {
                l.contains("WARN") && l.contains("peer unreachable") && l.contains(&unreachable)
            })
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    let warnings = c
        .log(leader)
        .lines()
        .filter(|l| l.contains("peer unreachable") && l.contains(&unreachable))
        .count();
    assert_eq!(warnings, 1, "once, not at every redial: {}", c.log(leader));
    c.spawn(gone);
    eventually(Duration::from_secs(10), "an INFO when it is back", || {
        c.log(leader).lines().any(|l| {
            l.contains("INFO") && l.contains("peer reachable again") && l.contains(&unreachable)
        })
    });
    assert!(
        !c.log(leader).contains("\u{1b}["),
        "no colour codes in a log file"
    );
}
