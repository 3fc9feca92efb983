//! Process-level tests of mutual TLS: a cluster serves normally with it on,
//! and neither a client nor a peer without a certificate the cluster CA
//! signed gets anything through.
#![cfg(not(madsim))]
// A test panics on any failure: that is how it reports.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::{said, Cluster};

/// Writes a throwaway CA and certificates with `kv-server dev-certs`.
fn dev_certs(dir: &Path) -> PathBuf {
    let out = Command::new(env!("CARGO_BIN_EXE_kv-server"))
        .args(["dev-certs", "--nodes", "3", "--out"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.to_path_buf()
}

/// The kv-server flags that turn TLS on with node `id`'s certificate from `certs`.
fn node_tls(certs: &Path, id: usize) -> Vec<String> {
    let file = |name: String| certs.join(name).display().to_string();
    vec![
        "--tls-cert".into(),
        file(format!("node-{id}.pem")),
        "--tls-key".into(),
        file(format!("node-{id}-key.pem")),
        "--tls-ca".into(),
        file("ca.pem".into()),
    ]
}

/// Runs kv-cli against `addrs` with `tls` flags; its exit code and all it said.
fn kv_cli(addrs: &str, tls: &[String], words: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kv-cli"))
        .args(["--addr", addrs, "--timeout", "3"])
        .args(tls)
        .args(words)
        .output()
        .unwrap();
    let said = said(&out);
    (out.status.code(), said.trim().to_string())
}

/// kv-cli flags for a client with `certs`' client certificate.
fn client_tls(certs: &Path) -> Vec<String> {
    let file = |name: &str| certs.join(name).display().to_string();
    vec![
        "--tls-ca".into(),
        file("ca.pem"),
        "--tls-cert".into(),
        file("client.pem"),
        "--tls-key".into(),
        file("client-key.pem"),
    ]
}

/// All client addresses of `c`, comma-separated.
fn all_addrs(c: &Cluster, n: usize) -> String {
    (1..=n)
        .map(|id| c.client(id).to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Retries a kv-cli request until it answers `want` (the cluster is
/// electing a leader at first).
fn eventually(addrs: &str, tls: &[String], words: &[&str], want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, said) = kv_cli(addrs, tls, words);
        if said == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{words:?} answered {said:?} (exit {code:?}), wanted {want:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn tls_cluster(name: &str, per_node: Vec<Vec<String>>) -> Cluster {
    Cluster::start_each(name, per_node.len(), &[], per_node)
}

#[test]
fn the_cluster_serves_normally_with_mutual_tls_on() {
    let dir = std::env::temp_dir().join(format!("kv-tls-ok-{}", std::process::id()));
    let certs = dev_certs(&dir);
    let c = tls_cluster("tls-ok", (1..=3).map(|id| node_tls(&certs, id)).collect());
    let addrs = all_addrs(&c, 3);
    let tls = client_tls(&certs);
    eventually(&addrs, &tls, &["SET", "greeting", "hello"], "OK");
    // Any node will do: followers redirect, over TLS too, in both protocols.
    for id in 1..=3 {
        let one = c.client(id).to_string();
        let (code, said) = kv_cli(&one, &tls, &["GET", "greeting"]);
        assert_eq!((code, said.as_str()), (Some(0), "VALUE hello"));
        let mut text = tls.clone();
        text.extend(["--protocol".into(), "text".into()]);
        let (code, said) = kv_cli(&one, &text, &["GET", "greeting"]);
        assert_eq!((code, said.as_str()), (Some(0), "VALUE hello"));
    }
    // kv-bench over TLS: every request answered.
    let out = Command::new(env!("CARGO_BIN_EXE_kv-bench"))
        .args(["--addr", &addrs, "--connections", "4", "--inflight", "4"])
        .args(["--count", "2000", "--keys", "100", "--quiet", "--json"])
        .args(&tls)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("\"ok\":2000,\"errors\":0"), "{report}");
}

/// Sends `command` (words of a RESP command) over mutual TLS with the
/// client certificate from `certs` to `addr`; the reply as text, RESP
/// framing included.
fn redis_over_tls(addr: std::net::SocketAddr, certs: &Path, command: &[&str]) -> String {
    let config = kv_net::tls::client_tls(
        &certs.join("ca.pem"),
        Some((&certs.join("client.pem"), &certs.join("client-key.pem"))),
    )
    .unwrap();
    let tls = rustls::ClientConnection::new(config, kv_net::tls::server_name(addr)).unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut stream = BufReader::new(rustls::StreamOwned::new(tls, tcp));
    let mut out = format!("*{}\r\n", command.len());
    for word in command {
        out.push_str(&format!("${}\r\n{word}\r\n", word.len()));
    }
    stream.get_mut().write_all(out.as_bytes()).unwrap();
    let mut reply = String::new();
    stream.read_line(&mut reply).unwrap();
    if reply.starts_with('$') && !reply.starts_with("$-1") {
        stream.read_line(&mut reply).unwrap();
    }
    reply
}

#[test]
fn a_redis_client_on_any_node_is_served_over_mutual_tls() {
    let dir = std::env::temp_dir().join(format!("kv-tls-redis-{}", std::process::id()));
    let certs = dev_certs(&dir);
    let c = tls_cluster(
        "tls-redis",
        (1..=3).map(|id| node_tls(&certs, id)).collect(),
    );
    eventually(
        &all_addrs(&c, 3),
        &client_tls(&certs),
        &["SET", "k", "v"],
        "OK",
    );
    // Two of the three are followers: they forward to the leader, over TLS
    // as themselves, and relay its answer.
    for id in 1..=3 {
        let key = format!("key{id}");
        let set = redis_over_tls(c.client(id), &certs, &["SET", &key, "value"]);
        assert_eq!(set, "+OK\r\n", "SET through node {id}");
        let get = redis_over_tls(c.client(id), &certs, &["GET", &key]);
        assert_eq!(get, "$5\r\nvalue\r\n", "GET through node {id}");
    }
}

#[test]
fn a_client_without_a_certificate_the_cluster_ca_signed_cannot_connect() {
    let dir = std::env::temp_dir().join(format!("kv-tls-client-{}", std::process::id()));
    let certs = dev_certs(&dir.join("cluster"));
    let foreign = dev_certs(&dir.join("foreign"));
    let c = tls_cluster(
        "tls-client",
        (1..=3).map(|id| node_tls(&certs, id)).collect(),
    );
    let addrs = all_addrs(&c, 3);
    eventually(&addrs, &client_tls(&certs), &["SET", "k", "v"], "OK");
    let node = c.client(1).to_string();

    // No certificate at all: refused in the handshake, and told so.
    let ca_only = vec![
        "--tls-ca".into(),
        certs.join("ca.pem").display().to_string(),
    ];
    let (code, said) = kv_cli(&node, &ca_only, &["GET", "k"]);
    assert_eq!(code, Some(4), "{said}");
    assert!(said.contains("refused by TLS"), "{said}");

    // A certificate from another CA.
    let mut stranger = client_tls(&foreign);
    stranger[1] = certs.join("ca.pem").display().to_string(); // trusts the cluster
    let (code, said) = kv_cli(&node, &stranger, &["GET", "k"]);
    assert_eq!(code, Some(4), "{said}");
    assert!(said.contains("refused by TLS"), "{said}");

    // The client does not trust a node whose CA it does not know.
    let (code, said) = kv_cli(&node, &client_tls(&foreign), &["GET", "k"]);
    assert_eq!(code, Some(4), "{said}");
    assert!(said.contains("TLS handshake failed"), "{said}");

    // Plain text on a TLS port gets one readable line, then the close.
    let mut plain = TcpStream::connect(c.client(1)).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    plain.write_all(b"GET k\n").unwrap();
    let mut line = String::new();
    BufReader::new(plain).read_line(&mut line).unwrap();
    assert_eq!(line.trim_end(), "ERR this port requires TLS (see --tls-ca)");

    // With --tls-client-cert-optional, a client with no certificate is served.
    drop(c);
    let mut lenient = (1..=3).map(|id| node_tls(&certs, id)).collect::<Vec<_>>();
    for flags in &mut lenient {
        flags.push("--tls-client-cert-optional".into());
    }
    let c = tls_cluster("tls-client-optional", lenient);
    eventually(&all_addrs(&c, 3), &ca_only, &["SET", "k", "v"], "OK");
}

#[test]
fn a_peer_without_a_valid_certificate_can_neither_join_nor_send() {
    let dir = std::env::temp_dir().join(format!("kv-tls-peer-{}", std::process::id()));
    let certs = dev_certs(&dir.join("cluster"));
    let foreign = dev_certs(&dir.join("foreign"));
    let mut c = tls_cluster("tls-peer", (1..=3).map(|id| node_tls(&certs, id)).collect());
    let good = format!("{},{}", c.client(1), c.client(2));
    let tls = client_tls(&certs);
    eventually(&all_addrs(&c, 3), &tls, &["SET", "k", "before"], "OK");
    // Node 3 comes back holding a certificate from another CA (and
    // trusting that CA).
    c.kill(3);
    c.set_flags(3, node_tls(&foreign, 3));
    c.spawn(3);
    eventually(&good, &tls, &["SET", "k", "written"], "OK");

    // Node 3 never hears from the cluster: it never learns a leader and
    // never receives the write (asked with a certificate it trusts).
    std::thread::sleep(Duration::from_secs(1));
    let three = c.client(3).to_string();
    let (_, said) = kv_cli(&three, &client_tls(&foreign), &["GET", "k"]);
    assert!(!said.contains("written"), "node 3 got the data: {said}");

    // Nor does anything node 3 sends get through: its connections are
    // refused in the handshake, and the others keep serving.
    for i in 0..5 {
        eventually(&good, &tls, &["SET", &format!("k{i}"), "more"], "OK");
        std::thread::sleep(Duration::from_millis(300));
    }
    for id in [1, 2] {
        assert!(
            c.log(id)
                .contains("refusing peer connection: TLS handshake failed"),
            "node {id} refused node 3's connections"
        );
    }
    // A plain connection to the peer port that sends a well-formed hello
    // gets nowhere either: the handshake fails on its first byte.
    let mut plain = TcpStream::connect(c.peer_addr(1)).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let hello = [0u8, 0, 0, 6, 8, 1, 16, 3, 24, 1];
    let _ = plain.write_all(&hello);
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut plain, &mut rest);
    assert!(
        rest.is_empty() || rest[0] == 0x15,
        "only a TLS alert comes back"
    );
}

/// Connections over the limit are told so, but only so many at once: with
/// TLS on, telling waits for the client's handshake, and a burst of
/// connections that never start one would otherwise cost the node a task
/// and a socket each for the whole write timeout; the rest are closed
/// unsaid.
#[test]
fn a_burst_of_silent_connections_over_the_limit_holds_few_of_the_node_s_sockets() {
    let dir = std::env::temp_dir().join(format!("kv-tls-burst-{}", std::process::id()));
    let certs = dev_certs(&dir);
    let per_node = (1..=3)
        .map(|id| {
            let mut flags = node_tls(&certs, id);
            flags.extend(["--max-connections".into(), "8".into()]);
            flags
        })
        .collect();
    let c = tls_cluster("tls-burst", per_node);
    let node = c.client(1);
    let pid = c.pid(1).unwrap();
    let open_fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    let started = Instant::now();
    while TcpStream::connect(node).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "node 1 never listened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    // Eight silent connections take every slot (each waits for a handshake).
    let held: Vec<_> = (0..8).map(|_| TcpStream::connect(node).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let before = open_fds();
    let burst: Vec<TcpStream> = (0..400)
        .filter_map(|_| TcpStream::connect_timeout(&node, Duration::from_secs(1)).ok())
        .collect();
    let mut most = 0;
    let sampled = Instant::now();
    while sampled.elapsed() < Duration::from_secs(2) {
        most = most.max(open_fds().saturating_sub(before));
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "{} silent connections over the limit: the node held at most {most} more sockets",
        burst.len()
    );
    assert!(most <= 64 + 16, "the node held {most} more sockets");
    drop(burst);
    drop(held);
}
